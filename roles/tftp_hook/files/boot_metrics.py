# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot watcher's metrics, in node_exporter's textfile-collector format (docs/formats.md lists them).

Labels stay bounded: ``pi`` (each Pi of the fleet map), ``stage`` (four), ``outcome`` (seven), ``fs`` (two),
``path`` (the data file systems), ``source`` (four), ``bakeform`` (the store's names); never a file name, a
client port or an address. Standard library only; installed beside pifleet_boot_watch.py, with the collection's
store/generations.py (and the two files of common/ it imports), through which the store is read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import bootlogs
import timeline

# The collection's own files the watcher reads the store with, as their import names and the file each is
# installed as beside this one: the store's layout is generations.py's alone (docs/formats.md).
COLLECTION_FILES = (
    ('ansible_collections.pifleet.netboot.plugins.module_utils.common.atomic', 'atomic.py'),
    ('ansible_collections.pifleet.netboot.plugins.module_utils.common.identity', 'identity.py'),
    ('ansible_collections.pifleet.netboot.plugins.module_utils.store.generations', 'generations.py'),
)


def load_collection_files(directory):
    """{file name: module} of COLLECTION_FILES, loaded from ``directory``. Their imports of each other are
    served from these files for the time of the loading only: no ansible_collections package installed on
    the host takes part, and none already imported (a test's) is replaced."""
    saved = {name: sys.modules.get(name) for name, _file in COLLECTION_FILES}
    loaded = {}
    try:
        for name, file in COLLECTION_FILES:
            spec = importlib.util.spec_from_file_location(name, os.path.join(directory, file))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            loaded[file] = module
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return loaded


_COLLECTION = load_collection_files(os.path.dirname(os.path.abspath(__file__)))
generations = _COLLECTION['generations.py']
is_name = _COLLECTION['identity.py'].is_name

OUTCOMES = ('ok', 'probe', 'not_found', 'timeout', 'aborted', 'error')
FS_KINDS = ('root', 'disks')
# Where a Pi's root and disks are mounted (and exported): <roots_dir>/mnt/<serial>, <disks_dir>/mnt/<serial>, on the
# mount points' own tmpfs (the collection's pistate/points.py POINTS; a contract test keeps the two equal).
POINTS = 'mnt'


def mount_point(top, serial):
    return os.path.join(top, POINTS, serial)


def read_json(path):
    try:
        with open(path, encoding='utf-8') as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def counters_of(state, name):
    """One Pi's counters in the watcher's state (made at zero)."""
    return state['counters'].setdefault(name, {
        'boots': 0, 'stalled': dict.fromkeys(timeline.STAGES, 0), 'tftp_bytes': 0, 'tftp_retransmits': 0,
        'requests': dict.fromkeys([*OUTCOMES, 'other'], 0), 'dhcp_answers': 0})


HELP = {
    'pifleet_boots_total': ('counter', 'Boots of each Pi seen by the bakery.'),
    'pifleet_boots_stalled_total': ('counter', 'Boots that stalled, by the step they stalled at.'),
    'pifleet_boot_stage': ('gauge', 'The stage the last boot of each Pi reached (1 for that stage).'),
    'pifleet_boot_stalled': ('gauge', 'Whether the last boot of each Pi is stalled.'),
    'pifleet_boot_last_start_timestamp_seconds': ('gauge', 'When the last boot of each Pi started.'),
    'pifleet_boot_last_tftp_seconds': ('gauge', 'Seconds from the first TFTP request to the last file, last boot.'),
    'pifleet_boot_last_dhcp_to_tftp_seconds': ('gauge', 'Seconds from the DHCP answer to the first TFTP request.'),
    'pifleet_boot_last_running_seconds': ('gauge', 'Seconds from the start of the last boot to running.'),
    'pifleet_tftp_bytes_total': ('counter', 'Bytes of boot files served to each Pi.'),
    'pifleet_tftp_retransmits_total': ('counter', 'TFTP packets sent again to each Pi.'),
    'pifleet_tftp_requests_total': ('counter', 'TFTP requests of each Pi, by outcome.'),
    'pifleet_dhcp_answers_total': ('counter', 'PXE answers of the proxy DHCP to each Pi.'),
    'pifleet_dhcp_unattributed_answers_total': ('counter', 'PXE answers to MACs of no known Pi.'),
    'pifleet_tftp_unknown_prefix_requests_total': ('counter', 'TFTP requests under prefixes the map does not know.'),
    'pifleet_tftp_unknown_prefixes': ('gauge', 'Unknown prefixes seen in the last hour (Pis waiting to be declared).'),
    'pifleet_pi_filesystem_size_bytes': ('gauge', "Size of each Pi's file systems, as mounted on the bakery."),
    'pifleet_pi_filesystem_avail_bytes': ('gauge', "Bytes available in each Pi's file systems."),
    'pifleet_data_filesystem_size_bytes': ('gauge', 'Size of the file systems holding the store, roots and disks.'),
    'pifleet_data_filesystem_avail_bytes': ('gauge', 'Bytes available on them.'),
    'pifleet_pi_generation': ('gauge', "The bakeform generation of each Pi's root."),
    'pifleet_pi_generation_behind': ('gauge', "Whether a Pi's generation is not its bakeform's current one."),
    'pifleet_bakeform_current_generation': ('gauge', 'The generation new roots of each bakeform get.'),
    'pifleet_bakeform_generations': ('gauge', 'How many generations of each bakeform the store holds.'),
    'pifleet_watch_source_up': ('gauge', 'Whether the watcher could read each of its sources on its last run.'),
    'pifleet_watch_last_run_timestamp_seconds': ('gauge', 'When the watcher last ran.'),
}


def label(value):
    return str(value).replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


def render(state, pis, summaries, *, config, now, sources):
    """The textfile: HELP and TYPE, then the samples, of every metric that has one."""
    samples = {name: [] for name in HELP}

    def add(metric, value, **labels):
        text = ','.join('%s="%s"' % (key, label(val)) for key, val in sorted(labels.items()))
        samples[metric].append('%s%s %s' % (metric, '{%s}' % text if text else '', _number(value)))

    for name in sorted(set(pis) | set(state['counters'])):
        counters = counters_of(state, name)
        add('pifleet_boots_total', counters['boots'], pi=name)
        for stage in timeline.STAGES:
            add('pifleet_boots_stalled_total', counters['stalled'][stage], pi=name, stage=stage)
        add('pifleet_tftp_bytes_total', counters['tftp_bytes'], pi=name)
        add('pifleet_tftp_retransmits_total', counters['tftp_retransmits'], pi=name)
        for outcome, count in sorted(counters['requests'].items()):
            add('pifleet_tftp_requests_total', count, pi=name, outcome=outcome)
        add('pifleet_dhcp_answers_total', counters['dhcp_answers'], pi=name)
        summary = summaries.get(name)
        if summary is not None:
            _boot_samples(add, name, summary)
    bakeforms = {}
    for name, pi in sorted(pis.items()):
        _pi_samples(add, name, pi, config, bakeforms)
    for name, (current, ids, _index) in sorted(bakeforms.items()):
        if current is not None:
            add('pifleet_bakeform_current_generation', current, bakeform=name)
        add('pifleet_bakeform_generations', len(ids), bakeform=name)
    add('pifleet_dhcp_unattributed_answers_total', state['totals']['unattributed_dhcp_answers'])
    add('pifleet_tftp_unknown_prefix_requests_total', state['totals']['unknown_prefix_requests'])
    add('pifleet_tftp_unknown_prefixes', len(state['unknown']))
    seen = set()
    for path in (config['store'], config['roots_dir'], config['disks_dir']):
        usage = bootlogs.usage(path)
        device = _device(path)
        if usage and device not in seen:
            seen.add(device)
            add('pifleet_data_filesystem_size_bytes', usage['size'], path=path)
            add('pifleet_data_filesystem_avail_bytes', usage['avail'], path=path)
    for source, up in sorted(sources.items()):
        add('pifleet_watch_source_up', int(bool(up)), source=source)
    add('pifleet_watch_last_run_timestamp_seconds', now)
    lines = []
    for metric, (kind, text) in HELP.items():
        if samples[metric]:
            lines += ['# HELP %s %s' % (metric, text), '# TYPE %s %s' % (metric, kind), *samples[metric]]
    return '\n'.join(lines) + '\n'


def _boot_samples(add, name, summary):
    for stage in timeline.STAGES:
        add('pifleet_boot_stage', int(summary['stage'] == stage), pi=name, stage=stage)
    add('pifleet_boot_stalled', int(summary['state'] == 'stalled'), pi=name)
    add('pifleet_boot_last_start_timestamp_seconds', summary['start'], pi=name)
    for metric, key in (('pifleet_boot_last_tftp_seconds', 'tftp'),
                        ('pifleet_boot_last_dhcp_to_tftp_seconds', 'dhcp_to_tftp'),
                        ('pifleet_boot_last_running_seconds', 'to_running')):
        if summary['seconds'][key] is not None:
            add(metric, summary['seconds'][key], pi=name)


def _bakeform(config, name, known):
    """(current generation, generation ids, index) of a bakeform, read once per run through generations.Bakeform."""
    if name not in known:
        bakeform = generations.Bakeform(config['store'], name)
        index = bakeform.load_index(strict=False)
        known[name] = (bakeform.current(index), bakeform.ids(), index)
    return known[name]


def _pi_samples(add, name, pi, config, bakeforms):
    if pi['serial']:
        for kind, top in zip(FS_KINDS, (config['roots_dir'], config['disks_dir'])):
            point = mount_point(top, pi['serial'])
            usage = bootlogs.usage(point) if os.path.ismount(point) else None
            if usage:
                add('pifleet_pi_filesystem_size_bytes', usage['size'], pi=name, fs=kind)
                add('pifleet_pi_filesystem_avail_bytes', usage['avail'], pi=name, fs=kind)
    marker = pi['marker'] or {}
    bakeform = marker.get('bakeform')
    if not is_name(bakeform):
        return
    current, _ids, index = _bakeform(config, bakeform, bakeforms)
    # A marker made before generations counts as the generation of the same content, as pi_status reads it.
    generation = generations.marker_generation(index, marker)
    if generation is not None:
        add('pifleet_pi_generation', generation, pi=name, bakeform=bakeform)
        if current is not None:  # behind as pi_root and status say it: any generation but the current one
            add('pifleet_pi_generation_behind', int(generation != current), pi=name)


def _device(path):
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def _number(value):
    if isinstance(value, float):
        return repr(round(value, 3))
    return str(int(value))
