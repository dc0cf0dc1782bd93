# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which hosts of the inventory are bakeries and Pis, and which bakery serves each Pi.

``find()`` is pure: it takes the inventory's groups and a way to read one variable of one host, and
returns the bakeries, the Pis and each Pi's bakery, or raises ``HostsError`` with every problem at
once. The playbooks run it first (the ``fleet_hosts`` filter), so the group settings work wherever
a user puts them: ``pifleet_bakery_group`` is read from each host itself (a host is a bakery when it
is in the group its own setting names), ``pifleet_pis_group`` from each bakery (the Pis are the hosts
of that group), ``pi_bakery`` from each Pi. ``owner()`` is the one rule for a Pi's bakery, which the
fleet plan follows too.
"""

from __future__ import annotations

BAKERY_GROUP = 'bakery'  # pifleet_bakery_group's default
PIS_GROUP = 'pis'  # pifleet_pis_group's default
PIS_NEEDS = ('required', 'group', 'ignored')
TARGETS = ('bakeries', 'pis')


class HostsError(Exception):
    def __init__(self, problems):
        self.problems = problems
        super().__init__('cannot tell the bakeries and the Pis of the inventory apart (%d problem(s)):\n  %s'
                         % (len(problems), '\n  '.join(problems)))


def owner(pi_bakery, bakeries):
    """The bakery that serves a Pi: the one its ``pi_bakery`` names, else the first bakery."""
    return pi_bakery or (bakeries[0] if bakeries else None)


def _group_problem(name, setting, groups, whose):
    if name not in groups:
        state = 'is not in the inventory'
    else:
        state = 'has no hosts'
    return 'the group %s (%s%s) %s' % (name, setting, whose, state)


def _bakeries(groups, value, bakery_group, problems):
    """[(bakery, the group its pifleet_bakery_group names)], in the order of that group."""
    members, found, named = {}, [], {}
    for host in groups.get('all', []):
        name = value(host, 'pifleet_bakery_group') or bakery_group
        named.setdefault(str(name), []).append(host)
        if name not in members:
            members[name] = set(groups.get(name) or ())
        if host in members[name]:
            found.append((host, name))
    if not found:
        states = '; '.join(_group_problem(name, 'pifleet_bakery_group', groups, ', default %s' % bakery_group
                                          if name == bakery_group else '') for name in sorted(named))
        problems.append('no bakery: %s. Put the bakery in group %s, or set pifleet_bakery_group to the group '
                        'that holds it (in group_vars/all, or in the bakery group\'s own group_vars)'
                        % (states or 'the inventory has no hosts', bakery_group))
        return []
    names = sorted({name for _host, name in found})
    if len(names) > 1:
        problems.append('the bakeries name different groups in pifleet_bakery_group (%s); set it once, in '
                        'group_vars/all' % ', '.join('%s: %s' % (host, name) for host, name in found))
    order = {host: index for index, host in enumerate(groups.get(found[0][1]) or ())}
    return sorted(found, key=lambda pair: order.get(pair[0], len(order)))


def _pis(groups, value, bakeries, pi_groups, problems):
    """(Pis in order, {Pi: its bakery})."""
    pis, bakery_of = [], {}
    # Each group read once, as a set: Ansible's groups are lazy lists that cost a lookup per element on each scan.
    members = {name: list(groups.get(name) or ()) for name in set(pi_groups.values())}
    sets = {name: set(hosts) for name, hosts in members.items()}
    for bakery in bakeries:
        for pi in members[pi_groups[bakery]]:
            if pi in bakery_of or pi in pi_groups:
                continue
            named = value(pi, 'pi_bakery')
            serves = owner(named, bakeries)
            if named and named not in pi_groups:
                problems.append('%s: pi_bakery %r is not a bakery of the inventory (bakeries: %s)'
                                % (pi, named, ', '.join(bakeries)))
                continue
            if pi not in sets[pi_groups[serves]]:
                problems.append('%s is in group %s (the Pis of bakery %s) but is served by bakery %s (%s), whose Pis '
                                'are group %s: set pi_bakery: %s, or put it in group %s'
                                % (pi, pi_groups[bakery], bakery, serves, 'its pi_bakery' if named
                                   else 'the first bakery', pi_groups[serves], bakery, pi_groups[serves]))
                continue
            pis.append(pi)
            bakery_of[pi] = serves
    return pis, bakery_of


def find(groups, value, *, target='bakeries', pis='group', selected=None):
    """The bakeries and the Pis of the inventory.

    ``groups``: {group: [hosts]} (Ansible's ``groups``); ``value(host, name)``: a variable of a host, None when
    unset. ``target``: what the playbook's plays run on (``bakeries`` or ``pis``); with ``selected`` (the hosts
    the limit lets in), at least one of them must be selected. ``pis``: ``required`` (at least one Pi),
    ``group`` (each bakery's Pi group must exist; it may be empty: a fleet of none) or ``ignored``.
    Returns {bakeries, bakery_group, pi_groups: {bakery: group}, pis, bakery_of: {Pi: bakery},
    pis_of: {bakery: [Pis]}}.
    """
    problems = []
    bakery_group, pis_group = BAKERY_GROUP, PIS_GROUP
    found = _bakeries(groups, value, bakery_group, problems)
    bakeries = [host for host, _name in found]
    pi_groups = {host: str(value(host, 'pifleet_pis_group') or pis_group) for host in bakeries}
    result = {'bakeries': bakeries, 'bakery_group': found[0][1] if found else bakery_group, 'pi_groups': pi_groups,
              'pis': [], 'bakery_of': {}, 'pis_of': {host: [] for host in bakeries}}
    if pis != 'ignored' and bakeries:
        missing = sorted({name for name in pi_groups.values() if name not in groups})
        for name in missing:
            problems.append('%s: set pifleet_pis_group to the group that holds the Pis (default %s), where the '
                            'bakeries see it (group_vars/all or their own group_vars)'
                            % (_group_problem(name, 'pifleet_pis_group', groups, ' of bakery %s' % ', '.join(
                                host for host in bakeries if pi_groups[host] == name)), pis_group))
        result['pis'], result['bakery_of'] = _pis(groups, value, bakeries, pi_groups, problems)
        for pi in result['pis']:
            result['pis_of'][result['bakery_of'][pi]].append(pi)
        if pis == 'required' and not result['pis'] and not missing:
            problems.append('no Pis: %s' % '; '.join(_group_problem(name, 'pifleet_pis_group', groups, '')
                                                     for name in sorted(set(pi_groups.values()))))
    if selected is not None and not problems:
        chosen = bakeries if target == 'bakeries' else result['pis']
        if not set(chosen) & set(selected):
            problems.append('the limit selects none of the %s (%s): this playbook runs on %s; widen --limit'
                            % (target, ', '.join(chosen[:5]) + (' ...' if len(chosen) > 5 else ''),
                               'the bakeries' if target == 'bakeries' else 'the Pis'))
    if problems:
        raise HostsError(problems)
    return result
