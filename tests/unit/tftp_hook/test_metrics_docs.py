# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Grafana dashboard, the alert rules and docs/formats.md name only metrics the boot watcher writes, and
the rules pass promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from bootwatch import load

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / 'docs' / 'metrics' / 'grafana-dashboard.json'
RULES = REPO / 'docs' / 'metrics' / 'prometheus-alerts.yml'
METRIC = re.compile(r'\b(pifleet_[a-z_]+)\b')


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    return set(load(tmp_path_factory.mktemp('watch')).boot_metrics.HELP)


def exprs_of_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    return [target['expr'] for panel in dashboard['panels'] for target in panel['targets']]


def test_the_dashboard_asks_for_metrics_the_watcher_writes(written):
    exprs = exprs_of_dashboard()
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used and used <= written, used - written
    ids = [panel['id'] for panel in json.loads(DASHBOARD.read_text())['panels']]
    assert len(ids) == len(set(ids))


def test_the_alert_rules_pass_promtool_and_name_written_metrics(written):
    rules = [rule for group in yaml.safe_load(RULES.read_text())['groups'] for rule in group['rules']]
    assert {'PifleetPiBootStalled', 'PifleetDataFilesystemFull'} <= {rule['alert'] for rule in rules}
    assert {name for rule in rules for name in METRIC.findall(rule['expr'])} <= written
    stalled = next(rule for rule in rules if rule['alert'] == 'PifleetDataFilesystemFull')
    assert '0.85' in stalled['expr']
    promtool = shutil.which('promtool')
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    proc = subprocess.run([promtool, 'check', 'rules', str(RULES)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_formats_lists_every_metric(written):
    text = (REPO / 'docs' / 'formats.md').read_text()
    section = text.split("## The boot watcher's metrics", 1)[1].split('\n## ', 1)[0]
    assert set(re.findall(r'`(pifleet_[a-z_]+)', section)) == written
