# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role variables as Ansible templates them, for tests that render a role's defaults, vars and templates."""

from __future__ import annotations

from ansible.template import trust_as_template


def trusted(value):
    """Role variables as the role's own files give them: their templates may be rendered."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {key: trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [trusted(item) for item in value]
    return value
