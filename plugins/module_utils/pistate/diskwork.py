# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pi_disk's plan and apply: each Pi's disks in a file system of its own, grown as its disks grow.

``plan(serial, items)`` reads one Pi's state (its container image, mount and unit, its index, and
through ``diskfiles.DiskFiles`` the disks inside) and decides what to do; ``apply(plan)`` does it,
or in check mode reports it with the index diff a real run would make. ``converge(items)`` runs both
Pi by Pi: a Pi that fails, fails alone. The host is the module's adapter: ``run(argv, pass_fds=())``,
``which(name, required)``, ``warn(msg)``, ``check_mode``, ``diff`` and ``tmpdir``. See ``disks`` for
the layout.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

from ansible_collections.pifleet.netboot.plugins.module_utils.common import atomic as _atomic
from ansible_collections.pifleet.netboot.plugins.module_utils.common import loopfs as _loopfs
from ansible_collections.pifleet.netboot.plugins.module_utils.common.confined import ConfinedError, Tree
from ansible_collections.pifleet.netboot.plugins.module_utils.common.module import (
    failed_pi,
    failed_pis_message,
    file_diff,
)
from ansible_collections.pifleet.netboot.plugins.module_utils.common.text import printable_name
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import points as _points
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import space as _space
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.diskfs import PEEK_OPTIONS, Containers, loop_bytes
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate.disks import (
    DISKS_MODE,
    GROUP,
    IMAGE,
    INDEX_LIMIT,
    LEGACY_INDEX,
    DiskError,
    Layout,
    check_name,
    container_size,
    load_index,
    parse_index,
    plan_disk,
    render_index,
)

ERRORS = (DiskError, ConfinedError, _loopfs.LoopError, OSError)
ORDER = {'removed': 0, 'grown': 1, 'created': 2, 'unchanged': 3}  # free space first, then take it
QUIET = ('unchanged', 'none', 'kept')


class PiDisks:
    """The disks of many Pis in one ``disks_dir``; one instance per module run."""

    def __init__(self, host, *, disks_dir, units_dir, migrate=False, space=None):
        self.host, self.disks_dir, self.migrate = host, disks_dir, migrate
        self.space = space  # a space.Ledger: new or grown disks must fit the data file system in the worst case
        self.real_dir = os.path.realpath(disks_dir)  # what mountinfo and the loop devices call it
        self.boxes = Containers(host, disks_dir, units_dir)
        self.mounts = None
        self.diffs = []
        self.shared_changed = False  # the disks directory's mode

    # ------------------------------------------------------------------ shared state

    def source(self, serial, point=None):
        """The device mounted at the Pi's mount point (None when nothing is): one mountinfo read per run."""
        if self.mounts is None:
            self.mounts = {target: source for target, _fstype, source in _atomic.read_mounts()}
        return self.mounts.get(point or Layout(self.real_dir, serial).point)

    def prepare(self):
        """The disks directory exists, 0700; scratch directories of killed runs are cleared away."""
        if self.host.check_mode:
            self.shared_changed = os.path.isdir(self.disks_dir) and os.stat(self.disks_dir).st_mode & 0o7777 != \
                DISKS_MODE
            return []
        if not os.path.isdir(self.disks_dir):
            os.makedirs(self.disks_dir, DISKS_MODE)
        if os.stat(self.disks_dir).st_mode & 0o7777 != DISKS_MODE:
            os.chmod(self.disks_dir, DISKS_MODE)
            self.shared_changed = True
        if _points.holds_images(self.disks_dir) and self.boxes.points.ensure():  # else with the first mount point
            self.shared_changed = True
        return self.boxes.sweep()

    def close(self):
        if self.boxes.points.release():  # the last disks are gone
            self.shared_changed = True
        if self.boxes.units:
            self.boxes.units.reload(self.host.run, self.host.which)

    def run(self, items):
        """The whole call: (the module's result, the failure message or None)."""
        result = {'changed': False, 'disks': [], 'pis': [], 'swept': [], 'failed_pis': []}
        failed = []
        try:
            result['swept'] = self.prepare()
            result['pis'], result['disks'], failed = self.converge(items)
        except ERRORS as exc:
            return dict(result, changed=self.shared_changed), 'changing the disks in %s failed: %s; check the ' \
                'path and its permissions' % (self.disks_dir, exc)
        finally:
            self.close()
        result['changed'] = self.shared_changed or any(pi['changed'] for pi in result['pis'])
        result['failed_pis'] = [failed_pi(pi['serial'], None, pi['msg']) for pi in failed]
        if not failed:
            return result, None
        return result, failed_pis_message('pi_disk', result['failed_pis'])

    def converge(self, items):
        """Plan and apply Pi by Pi. Returns (one result per Pi, one per item in order, the failed Pis)."""
        groups = {}
        for item in items:
            groups.setdefault(item['serial'], []).append(item)
        pis, disks, failed = [], {}, []
        for serial, group in sorted(groups.items()):
            plan = None
            try:
                plan = self.plan(serial, group)
                pi, results = self.apply(plan)
            except ERRORS as exc:
                msg = str(exc) if isinstance(exc, (DiskError, ConfinedError)) else 'changing the disks of Pi %s ' \
                    'failed: %s' % (serial, exc)
                pi, results = self.results(plan or {'serial': serial, 'items': group}, msg)
                failed.append(pi)
            pis.append(pi)
            disks.update(results)
        return pis, [disks[item['key']] for item in items], failed

    # ------------------------------------------------------------------ plan

    def plan(self, serial, items):
        lay = Layout(self.disks_dir, serial)
        self.source(serial)  # mountinfo read
        if self.boxes.relocate(Layout(self.real_dir, serial), self.mounts) and not self.host.check_mode:
            self.mounts = None  # moved: read again
        plan = dict(self.container_state(lay), serial=serial, layout=lay, items=items, steps=[])
        plan['old'], recorded = load_index(lay.index)
        with self.view(plan) as files:
            if plan['legacy']:
                recorded = self.legacy_disks(plan, files)
            elif files is not None and (recorded is None or not plan['old']):
                if recorded is None:
                    self.host.warn('the index %s of Pi %s is unreadable: rebuilt from the disks in %s'
                                   % (lay.index, serial, lay.point))
                recorded = {name: {'size': cur['size'], 'fstype': None} for name, cur in files.scan().items()}
            elif files is None:
                recorded = {}  # an index without its file system lists nothing that exists
            plan['now'], entries = dict(recorded or {}), dict(recorded or {})
            for item in items:
                name = item['name']
                known = entries.get(name, {})
                current = files.inspect(name, known.get('fstype'), known.get('blank')) if files else None
                step = dict(plan_disk(item, current, bool(files and files.is_dir(name))), item=item, current=current)
                if item['state'] == 'absent':
                    entries.pop(name, None)
                else:
                    entries[name] = plan_entry(step)
                plan['steps'].append(step)
            leftovers = self.leftovers(files, plan['steps']) if files and not entries else []
        plan.update(entries=entries, new=render_index(lay, entries))
        plan['container'] = self.plan_container(plan, leftovers)
        self.claim_space(plan)
        return plan

    def claim_space(self, plan):
        """Book what a new or grown disks file system may take at worst on the data file system, or refuse it."""
        container = plan['container']
        more = container.get('capacity', 0) - (plan['size'] if plan['image'] else 0)
        if self.space is None or container['action'] not in ('created', 'migrated', 'grown') or more <= 0:
            return
        try:
            self.space.claim(self.disks_dir, more, 'the disks of Pi %s' % plan['serial'])
        except _space.SpaceError as exc:
            raise DiskError(str(exc)) from None

    def container_state(self, lay):
        """What is at the Pi's paths: image, mount and an old layout's directory; DiskError for what is foreign."""
        point, image = _lstat(lay.point), _lstat(lay.image)
        if point is not None and not stat.S_ISDIR(point.st_mode):
            raise DiskError('the disks of Pi %s: %s is not a directory (a symbolic link or a file) and pi_disk '
                            'never made it so; move it away, then run again' % (lay.serial, lay.point))
        if image is not None and not stat.S_ISREG(image.st_mode):
            raise DiskError('the disks of Pi %s: %s is not a regular file, so it is not the disks file system '
                            'pi_disk made; move it away, then run again' % (lay.serial, lay.image))
        source, at = self.source(lay.serial), lay.point
        if source is None and self.host.check_mode and self.boxes.moved(lay):  # still where earlier releases had it
            source, at = self.source(lay.serial, os.path.realpath(lay.old_point)), lay.old_point
        if source is not None and _loopfs.loop_backing(source) not in (lay.image, os.path.realpath(lay.image)):
            raise DiskError('the disks of Pi %s: %s has %s mounted on it, not %s; pi_disk mounts only the Pi\'s '
                            'disks file system there: unmount it, then run again'
                            % (lay.serial, at, source, lay.image))
        old = _lstat(lay.old_point)
        legacy = image is None and source is None and old is not None and stat.S_ISDIR(old.st_mode) and not \
            os.path.ismount(lay.old_point) and bool(os.listdir(lay.old_point))
        return {'image': image is not None, 'size': image.st_size if image else 0, 'source': source, 'legacy': legacy,
                'at': at}

    @contextlib.contextmanager
    def view(self, plan):
        """DiskFiles of the disks as they are: the mounted container, an old layout, or a read-only look."""
        lay, serial = plan['layout'], plan['serial']
        if plan['legacy'] or plan['source']:
            with Tree(lay.old_point if plan['legacy'] else plan['at'], 'the disks of Pi %s' % serial) as tree:
                yield self.boxes.files(tree, lay)
        elif plan['image']:
            point = tempfile.mkdtemp(prefix='peek-%s-' % serial, dir=self.host.tmpdir)
            self.boxes.mounter.mount(lay.image, point, PEEK_OPTIONS, 'a read-only look at the disks of Pi %s' % serial)
            try:
                with Tree(point, 'the disks of Pi %s' % serial) as tree:
                    yield self.boxes.files(tree, lay)
            finally:
                self.boxes.mounter.umount(point, 'the read-only look at the disks of Pi %s' % serial)
                os.rmdir(point)
        else:
            yield None

    def legacy_disks(self, plan, files):
        """{name: {size, fstype}} of an old-layout directory, once it is known to be safe to migrate."""
        lay = plan['layout']
        old = ('the disks of Pi %s are in the old layout: %s is a plain directory on the bakery\'s file system, '
               'where a Pi can reach other files with forged NFS handles' % (lay.serial, lay.old_point))
        if not self.migrate:
            raise DiskError('%s; shut the Pi down, then run pi_disk with migrate: true to copy them into a file '
                            'system of their own (%s)' % (old, lay.image))
        strange = [name for name in sorted(files.names()) if name != LEGACY_INDEX and not (
            check_name(name) is None and files.is_dir(name) and set(files.names(name, 3)) <= {IMAGE})]
        if strange:
            raise DiskError('%s, and it holds what pi_disk did not make (%s); migrate: true copies only disk.img '
                            'files, so move those away first' % (old, ', '.join(map(printable_name, strange[:5]))))
        # The old index lay in the Pi's directory: its fstype is a hint at most (never trusted for removal).
        recorded = parse_index(files.tree.read_text(LEGACY_INDEX, INDEX_LIMIT) or '') or {}
        return {name: {'size': current['size'], 'fstype': recorded.get(name, {}).get('fstype')}
                for name, current in files.scan().items()}

    @staticmethod
    def leftovers(files, steps):
        """What stays in a container once its disks are gone: files the Pi made, a non-empty lost+found."""
        going = {step['item']['name'] for step in steps if step['item']['state'] == 'absent'}
        left = [name for name in files.names() if name not in going and name != 'lost+found']
        return sorted(left) + (['lost+found'] if files.names('lost+found', 1) else [])

    def plan_container(self, plan, leftovers):
        lay, entries = plan['layout'], plan['entries']
        if not entries:
            exists = plan['image'] or plan['source']
            if not (exists or plan['legacy']):
                return {'action': 'none'}
            if exists and leftovers and not any(item['force'] for item in plan['items']):
                return {'action': 'kept', 'leftovers': leftovers}
            return {'action': 'removed'}
        capacity = container_size([entry['size'] for entry in entries.values()])
        if plan['legacy'] or not plan['image']:
            return {'action': 'migrated' if plan['legacy'] else 'created', 'capacity': capacity}
        capacity = max(capacity, plan['size'])  # never shrinks
        # The container is the bakery's own file system (its kernel writes every byte of its metadata; the Pi only
        # writes files in it over NFS): its superblock is not Pi-made bytes.
        info = _loopfs.read_superblock(plan['source'] or lay.image)
        if info is None:
            raise DiskError('the disks file system %s of Pi %s is not readable ext4 (pifleet made it: was it '
                            'replaced or damaged on the bakery?); check it with e2fsck -f while it is unmounted '
                            '(stop the NFS server first), then run again' % (lay.image, lay.serial))
        lagging = info['blocks'] * info['block_size'] + GROUP <= plan['size']
        grow = plan['size'] < capacity or lagging or (plan['source'] and loop_bytes(plan['source']) < plan['size'])
        unit = not self.boxes.unit_wanted(lay)
        action = 'grown' if grow else 'mounted' if unit or not plan['source'] else 'unchanged'
        return {'action': action, 'capacity': capacity, 'grow': grow}

    # ------------------------------------------------------------------ apply

    def apply(self, plan):
        lay, container = plan['layout'], plan['container']
        changed = container['action'] not in QUIET or plan['new'] != plan['old'] or any(
            step['action'] != 'unchanged' for step in plan['steps'])
        if container['action'] == 'kept':
            self.host.warn('Pi %s has no disks left, but its disks file system %s holds other files (%s): kept; '
                           'remove them, or remove its disks with force: true to delete it with them'
                           % (plan['serial'], lay.point, ', '.join(map(printable_name, container['leftovers'][:5]))))
        try:
            if changed and not self.host.check_mode:
                self.change(plan)
        finally:
            # What was written (a new ext4 disk's index entry learns its blank size only once it is made).
            after = plan.get('written', plan['new'])
            if after != plan['old'] and self.host.diff:
                self.diffs.append(file_diff(lay.index, plan['old'], after))
        return self.results(plan)

    def change(self, plan):
        lay, action = plan['layout'], plan['container']['action']
        now = plan['now']
        try:
            if action in ('created', 'migrated'):
                self.boxes.build(plan)
            elif action == 'removed':
                self.boxes.remove(plan)
                now.clear()
            elif plan['image']:
                self.boxes.ensure(plan)
            if plan['image'] and action != 'removed':
                with Tree(lay.point, 'the disks of Pi %s' % plan['serial']) as tree:
                    files = self.boxes.files(tree, lay)
                    for step in sorted(plan['steps'], key=lambda s: ORDER[s['action']]):
                        self.step(files, step, now)
        finally:
            text = render_index(lay, now) if plan['image'] else ''  # an index only beside its file system
            plan['written'] = text
            if text != plan['old']:
                _atomic.write_or_remove(lay.index, text or None, 0o600)  # beside the image, out of the Pi's reach

    def step(self, files, step, now):
        item, action = step['item'], step['action']
        if action == 'created':
            blank = files.create(item['name'], step['size'], item['fstype'])
            if item['fstype'] == 'ext4':
                step['blank'] = blank
        elif action == 'grown':
            files.grow(item['name'], step['size'])
        elif action == 'removed':
            files.remove(item['name'])
        if item['state'] == 'present':
            now[item['name']] = plan_entry(step)
        else:
            now.pop(item['name'], None)
        step['done'] = True

    # ------------------------------------------------------------------ results

    def results(self, plan, msg=None):
        """(the Pi's result, {key: the result of each of its disks}); ``msg`` when the Pi failed."""
        lay = plan.get('layout') or Layout(self.disks_dir, plan['serial'])
        container = plan.get('container', {})
        pi = {'serial': plan['serial'], 'path': lay.point, 'image': lay.image, 'index': lay.index,
              'action': 'failed' if msg else container.get('action', 'none'), 'changed': False,
              'capacity': 0, 'allocated': 0}
        steps = {step['item']['key']: step for step in plan.get('steps', [])}
        measured = self.measure(plan) if not self.host.check_mode and not msg else {}
        disks = {}
        for item in plan['items']:
            step = steps.get(item['key'])
            disks[item['key']] = self.disk_result(lay, item, step, measured.get(item['name']), msg)
        pi['changed'] = any(d['changed'] for d in disks.values()) or (not msg and (
            container['action'] not in QUIET or plan['new'] != plan['old']))
        if msg:
            pi['msg'] = msg
            pi['changed'] = any(step.get('done') and step['action'] != 'unchanged' for step in steps.values())
        st = _lstat(lay.image)
        if self.host.check_mode and container.get('capacity'):
            pi['capacity'] = container['capacity']
        elif st is not None:
            pi.update(capacity=st.st_size, allocated=st.st_blocks * 512)
        return pi, disks

    def disk_result(self, lay, item, step, measured, msg):
        result = {'serial': item['serial'], 'name': item['name'], 'path': lay.disk(item['name']),
                  'action': 'failed', 'changed': False, 'apparent_size': 0, 'allocated_size': 0, 'fstype': None}
        if step is None or (msg and not step.get('done')):
            return dict(result, msg=msg or 'not planned')
        action = step['action']
        result.update(action=action, changed=action != 'unchanged')
        current = measured if measured is not None else step['current']
        if action != 'removed' and current is not None:
            result.update(apparent_size=current['size'], allocated_size=current['allocated'],
                          fstype=current['fstype'])
        if self.host.check_mode and action in ('created', 'grown'):
            result.update(apparent_size=step['size'], fstype=item['fstype'])
        return result

    def measure(self, plan):
        """The disks as they are after the run (sizes for the results); {} when there is nothing to look at."""
        lay = plan['layout']
        if not plan['image'] or not plan['source'] or plan['container']['action'] == 'removed':
            return {}
        found = {}
        with Tree(lay.point, 'the disks of Pi %s' % plan['serial']) as tree:
            files = self.boxes.files(tree, lay)
            for step in plan['steps']:
                name = step['item']['name']
                if step['action'] == 'removed':
                    continue
                with contextlib.suppress(DiskError):
                    current = files.inspect(name, step['item']['fstype'])
                    if current is not None:
                        found[name] = current
        return found


def plan_entry(step):
    """The index entry of a disk after its step: its size, fstype and (ext4) how much its blank file system took."""
    item, current = step['item'], step['current'] or {}
    entry = {'size': step.get('size') or current['size'], 'fstype': item['fstype']}
    blank = step.get('blank', current.get('blank'))
    if item['fstype'] == 'ext4' and blank is not None:
        entry['blank'] = blank
    return entry


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
