# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each Pi's boots, stage by stage, from what the bakery sees (the records of bootlogs.py).

A boot goes through four steps, each shown by one of the bakery's services:

- ``dhcp``: the proxy DHCP answered the Pi's PXE request (dnsmasq's log); done once it asks for a file;
- ``tftp``: the boot set fetched from the TFTP hook (its events); done once its kernel arrived;
- ``nfs``: its root in use over NFS (the NFS server's export/client list); done once it runs;
- ``running``: its SSH server answers with a host key its root was given (ssh-keyscan from the bakery).

``attribute`` hands each Pi its records, ``segment`` cuts them into boots, ``summarise`` says where a
boot got to, when, how long each part took, and gives a plain hint when it stalled. Pure functions:
times are Unix seconds, ``now`` is passed in.

Standard library only, and no import of the collection: the boot watcher on the bakery runs this file
as it is (roles/tftp_hook/files/pifleet_boot_watch.py).
"""

from __future__ import annotations

import re

STAGES = ('dhcp', 'tftp', 'nfs', 'running')
# Seconds: a quiet gap that starts a new boot, and how long each step may take before a boot counts as stalled
# (measured from the last sign of the step before it). A Pi 4 asks for its first file within a second of the
# DHCP answer and mounts its root some 10-20 s after its kernel arrived; a virtual Pi under TCG takes minutes.
LIMITS = {'boot_gap': 120, 'dhcp': 60, 'tftp': 60, 'nfs': 180, 'running': 300}
KERNEL = re.compile(r'(?:kernel[\w.+-]*\.img|vmlinu[xz][\w.+-]*|z?Image[\w.+-]*|[\w.+-]*\.kernel)', re.I)
ERRORS = frozenset(['timeout', 'aborted', 'error'])
REFUSALS = frozenset(['not_found', 'unknown_prefix'])
ROOT_LEVEL = 'root'
# The gap between the DHCP answer and the first TFTP request above which the timeline says so (spanning tree).
SLOW_START = 10


def attribute(dhcp, tftp, pis):
    """Each Pi's records: ``({name: [records]}, {'dhcp': [...], 'tftp': [...]})``, the second the unclaimed ones.

    ``pis``: dicts with ``name``, ``prefixes`` (its TFTP prefixes), ``macs`` and ``address``. DHCP answers go by
    MAC; TFTP requests by prefix, regardless of case; root-level requests (the Pi 3's ``bootcode.bin``) to the
    Pi whose prefix the same client asks for next, else to the Pi at that address.
    """
    by_prefix, by_mac, by_address = {}, {}, {}
    for pi in pis:
        for prefix in pi.get('prefixes') or ():
            by_prefix[str(prefix).lower()] = pi['name']
        for mac in pi.get('macs') or ():
            by_mac[str(mac).lower()] = pi['name']
        if pi.get('address'):
            by_address[pi['address']] = pi['name']
    mine = {pi['name']: [] for pi in pis}
    strays = {'dhcp': [], 'tftp': []}
    for record in dhcp:
        name = by_mac.get(record['mac'])
        (mine[name] if name else strays['dhcp']).append(record)
    pending = {}
    for record in sorted(tftp, key=lambda r: r['time']):
        if not record['prefix']:
            pending.setdefault(record['client'], []).append(record)
            continue
        name = by_prefix.get(record['prefix'].lower())
        target = mine[name] if name else strays['tftp']
        target.extend(pending.pop(record['client'], []))
        target.append(record)
    for client, records in pending.items():
        name = by_address.get(client)
        (mine[name] if name else strays['tftp']).extend(records)
    for records in mine.values():
        records.sort(key=lambda r: r['time'])
    return mine, strays


def observation(*, root_export=None, address=None, exports=None, clients=None, verdict=None, checked=None,
                seen=None):
    """What the bakery sees of one Pi now, for summarise().

    ``exports`` and ``clients``: the NFS server's lists (bootlogs.parse_ganesha_*), None when it tells nothing;
    the Pi's root export shows whether its root is in use, its client entry whether it asked to mount and was
    refused. ``verdict``: its SSH host key (bootlogs.key_verdict), asked at ``checked`` (None: not asked).
    ``seen``: the watcher's first sightings of this boot (``{nfs, running}``).
    """
    found = {'nfs_observable': exports is not None, 'seen': seen or {}}
    if exports is not None:
        export = exports.get(root_export)
        client = (clients or {}).get(address) if address else None
        used_by = export if export is not None else client
        used = bool(used_by and used_by['nfs'])
        found['nfs'] = {'used': used, 'last': used_by['last'] if used else None,
                        'refused': bool(client and client.get('mount') and not used)}
    if checked is not None:
        found['ssh'] = {'checked': checked, 'verdict': verdict}
    return found


def _end(record):
    return record['time'] + record.get('duration', 0.0)


def segment(records, boot_gap=LIMITS['boot_gap'], joined=0):
    """Cut one Pi's records (oldest first) into boots.

    A boot starts at a DHCP answer once the boot before it asked for a file under its prefix (the Pi 3's
    ``bootcode.bin`` asks DHCP again before its prefixed files, within one boot), or after ``boot_gap``
    seconds without a record. The first ``joined`` records are one boot whatever their gaps (what the boot watcher
    kept of the boot going on).
    """
    boots, current, last, prefixed = [], None, None, False
    for index, record in enumerate(records):
        fresh = current is None or (index >= joined and (
            record['time'] - last > boot_gap or (record['kind'] == 'dhcp' and prefixed)))
        if fresh:
            current, prefixed, last = [], False, record['time']
            boots.append(current)
        current.append(record)
        last = max(last, _end(record))
        prefixed = prefixed or (record['kind'] == 'tftp' and bool(record['prefix']))
    return boots


def ago(seconds):
    """``40 s``, ``3 minutes``, ``2 hours``, ``5 days``: how long ago, for people."""
    seconds = max(0, int(seconds))
    for size, unit in ((86400, 'day'), (3600, 'hour'), (60, 'minute')):
        if seconds >= 2 * size or (size == 60 and seconds >= 120):
            count = seconds // size
            return '%d %s%s' % (count, unit, '' if count == 1 else 's')
    return '%d s' % seconds


def _tftp_facts(tftp):
    files = [r for r in tftp if r['outcome'] == 'ok']
    kernel = next((r for r in files if KERNEL.fullmatch(r['path'].rsplit('/', 1)[-1])), None)
    last = tftp[-1] if tftp else None
    return {
        'requests': len(tftp), 'files': len(files), 'bytes': sum(r['bytes'] for r in files),
        'retransmits': sum(r['retransmits'] for r in tftp),
        'errors': sum(1 for r in tftp if r['outcome'] in ERRORS),
        'refusals': sum(1 for r in tftp if r['outcome'] in REFUSALS),
        'last_file': last['path'] if last else None, 'last_outcome': last['outcome'] if last else None,
        'last_error': last.get('error') if last else None, 'client': last['client'] if last else None,
        'kernel': kernel['path'] if kernel else None, 'kernel_time': _end(kernel) if kernel else None,
    }


def _observed_nfs(observed, first_tftp):
    """When the Pi's root was in use this boot: the watcher's first sighting, else the server's last activity."""
    seen = (observed.get('seen') or {}).get('nfs')
    if seen is not None:
        return seen, True
    nfs = observed.get('nfs') or {}
    if nfs.get('used') and nfs.get('last') is not None and first_tftp is not None and nfs['last'] >= first_tftp:
        return nfs['last'], False
    return None, False


def _observed_running(observed, start):
    seen = (observed.get('seen') or {}).get('running')
    if seen is not None:
        return seen, True
    ssh = observed.get('ssh') or {}
    if ssh.get('verdict') in ('yes', 'unverified') and ssh.get('checked', 0) >= start:
        return ssh['checked'], False
    return None, False


def summarise(boot, now, limits=None, observed=None):
    """Where one boot (its records, oldest first) got to, and why it stopped there.

    ``observed`` (the latest boot only) is what the bakery sees now or saw while watching: ``nfs``
    (``{used, last, refused}`` of the Pi's root export), ``nfs_observable`` (False when the NFS server in use
    tells nothing), ``ssh`` (``{checked, verdict}``, see bootlogs.key_verdict) and ``seen`` (``{nfs,
    running}``: when the watcher first saw them). Without it, a boot is judged on DHCP and TFTP alone and
    ends ``ended`` after its kernel (a later boot took over; what it did then is unknown).
    """
    limits = dict(LIMITS, **(limits or {}))
    latest = observed is not None
    observed = observed or {}
    dhcp = [r for r in boot if r['kind'] == 'dhcp']
    tftp = [r for r in boot if r['kind'] == 'tftp']
    start = boot[0]['time']
    facts = _tftp_facts(tftp)
    first_tftp = tftp[0]['time'] if tftp else None
    tftp_done = max(_end(r) for r in tftp) if tftp else None
    nfs_time, nfs_exact = _observed_nfs(observed, first_tftp) if latest else (None, False)
    running_time, running_exact = _observed_running(observed, start) if latest else (None, False)
    reached = {'dhcp': bool(dhcp or tftp), 'tftp': bool(tftp), 'nfs': nfs_time is not None or running_time is not None,
               'running': running_time is not None}
    stage = [s for s in STAGES if reached[s]][-1]
    # DHCP is done once the Pi asks for a file, TFTP once its kernel arrived; a root in use is the NFS step done.
    done = {'dhcp': reached['tftp'], 'tftp': facts['kernel'] is not None or reached['nfs'], 'nfs': True,
            'running': True}
    summary = {
        'start': start, 'stage': stage, 'state': 'running' if stage == 'running' else 'booting', 'stalled_at': None,
        'times': {'dhcp': dhcp[0]['time'] if dhcp else None, 'tftp': first_tftp, 'kernel': facts['kernel_time'],
                  'tftp_done': tftp_done, 'nfs': nfs_time if nfs_exact else None,
                  'nfs_last': (observed.get('nfs') or {}).get('last') if latest else None,
                  'running': running_time if running_exact else None},
        'dhcp': {'answers': len(dhcp), 'mac': dhcp[-1]['mac'] if dhcp else None,
                 'vendor_class': dhcp[-1].get('vendor_class') if dhcp else None,
                 'client_id': dhcp[-1].get('client_id') if dhcp else None},
        'tftp': {k: v for k, v in facts.items() if k != 'kernel_time'},
        'seconds': {'dhcp_to_tftp': first_tftp - dhcp[0]['time'] if dhcp and tftp else None,
                    'tftp': tftp_done - first_tftp if tftp else None,
                    'to_running': running_time - start if running_exact else None},
        'took': _took(start, (('running', running_time if running_exact else None),
                              ('nfs', nfs_time if nfs_exact else None), ('tftp', tftp_done),
                              ('dhcp', dhcp[-1]['time'] if dhcp else None))),
        'up': (observed.get('ssh') or {}).get('verdict') if latest else None,
        'hint': None, 'note': None,
    }
    if not done[stage]:
        pending = stage
    else:
        pending = STAGES[STAGES.index(stage) + 1] if stage != 'running' else None
    if pending is not None:
        _judge(summary, pending, now, limits=limits, observed=observed, latest=latest)
    summary['note'] = _note(summary)
    return summary


def _took(start, known):
    """``{seconds, to}``: from the start of a boot to the furthest stage whose time is known."""
    for stage, when in known:
        if when is not None:
            return {'seconds': when - start, 'to': stage}
    return {'seconds': 0.0, 'to': None}


def _since(summary, pending, observed):
    """The last sign of the step before ``pending`` (when the pending one should have followed)."""
    times = summary['times']
    if pending == 'dhcp':
        return times['dhcp']
    if pending == 'tftp':
        return times['tftp_done']
    if pending == 'nfs':
        return times['kernel'] or times['tftp_done']
    nfs_seen = times['nfs'] or times['nfs_last']
    return nfs_seen if nfs_seen is not None else times['tftp_done']


def _judge(summary, pending, now, *, limits, observed, latest):
    """``booting`` while the pending step may still come, ``stalled`` after its limit; ``ended`` for old boots."""
    nfs_blind = latest and observed.get('nfs_observable') is False
    since = _since(summary, pending, observed)
    limit = limits[pending] + (limits['running'] if pending == 'nfs' and nfs_blind else 0)
    if latest and pending == 'running':
        last_use = summary['times']['nfs_last']
        if last_use is not None and summary['times']['tftp_done'] is not None and \
                last_use - summary['times']['tftp_done'] > limits['running']:
            summary['state'] = 'ended'  # it used its root long after booting: it ran, and is off (or silent) now
            summary['hint'] = _HINTS[pending](summary, now, observed)
            return
    if not latest and pending in ('nfs', 'running'):
        summary['state'] = 'ended'
        return
    if since is not None and now - since <= limit:
        return
    summary['state'], summary['stalled_at'] = 'stalled', pending
    summary['hint'] = _HINTS[pending](summary, now, observed)


def _hint_dhcp(summary, now, _observed):
    answers = summary['dhcp']['answers']
    return ('asked for DHCP %s ago (%d answer%s from our proxy) and never asked for a boot file: check that '
            "the LAN's DHCP server gives it an address and that it reaches the TFTP server the proxy names"
            % (ago(now - summary['times']['dhcp']), answers, '' if answers == 1 else 's'))


def _hint_tftp(summary, now, _observed):
    tftp, when = summary['tftp'], ago(now - summary['times']['tftp_done'])
    if tftp['last_outcome'] == 'not_found':
        return ('asked for %s %s ago, which is not in its boot folder, and stopped before its kernel: check '
                "the bakeform's boot files and kernel= in its config.txt" % (tftp['last_file'], when))
    if tftp['last_outcome'] in ERRORS:
        return ('stopped during %s %s ago (%s, %d retransmits) before its kernel: check the link (MTU, a lossy '
                'port) and that the TFTP hook is running' % (tftp['last_file'], when, tftp['last_outcome'],
                                                             tftp['retransmits']))
    return ('fetched %s %s ago and stopped before its kernel: check config.txt (kernel=) and its boot files'
            % (tftp['last_file'], when))


def _hint_nfs(summary, now, observed):
    times = summary['times']
    since = ago(now - (times['kernel'] or times['tftp_done']))
    what = 'its kernel' if times['kernel'] else 'its boot files'
    if observed.get('nfs_observable') is False:
        return ('fetched %s %s ago and its SSH server never answered; the NFS server in use does not say whether '
                'it mounted its root: check the export and `nfsroot=` in cmdline.txt, then its console'
                % (what, since))
    refused = ' (the NFS server refused its mount)' if (observed.get('nfs') or {}).get('refused') else ''
    return ('fetched %s %s ago and never mounted its root%s: check the export and `nfsroot=` in cmdline.txt'
            % (what, since, refused))


def _hint_running(summary, now, _observed):
    times = summary['times']
    if summary['state'] == 'ended':
        return ('used its root until %s ago and does not answer SSH now: powered off, or its network is down'
                % ago(now - times['nfs_last']))
    since = ago(now - (times['nfs'] or times['nfs_last'] or times['tftp_done']))
    if summary.get('up') == 'wrong key':
        return ('mounted its root %s ago and an SSH server answers on its address with a host key its root was not '
                'given: another device on that address, or keys replaced outside pifleet' % since)
    return ('mounted its root %s ago and its SSH server never answered: look at its console (a failed unit, or a '
            'network manager that took down the NIC its root lives on)' % since)


# Where to look when a boot stalled before each step.
_HINTS = {'dhcp': _hint_dhcp, 'tftp': _hint_tftp, 'nfs': _hint_nfs, 'running': _hint_running}


def _note(summary):
    gap = summary['seconds']['dhcp_to_tftp']
    answers = summary['dhcp']['answers']
    if gap is not None and gap > SLOW_START:
        return ('%s between its first DHCP answer and its first TFTP request (%d DHCP answer%s): a switch port that '
                'waits for spanning tree (set it to portfast/edge) or a slow DHCP server on the LAN'
                % (ago(gap), answers, '' if answers == 1 else 's'))
    return None
