# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bakeform's ``capture``: the plan (which Pi, which generation its root came from) and the making of the
generation, for ``store.generationwork.Generations.add``.

A per-Pi part (it reads a Pi's root and its marker) that makes a store generation, so it sits after the
store: it imports ``store``, never the other way. The module hands it the host adapter and the
``Generations`` of the bakeform being captured into.
"""

from __future__ import annotations

import os

from ansible_collections.pifleet.netboot.plugins.module_utils.common.identity import normalise_serial
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import capture as _capture
from ansible_collections.pifleet.netboot.plugins.module_utils.pistate import roots as _roots
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeform import ROOT_IMAGE, Ingest
from ansible_collections.pifleet.netboot.plugins.module_utils.store.bakeformwork import Build
from ansible_collections.pifleet.netboot.plugins.module_utils.store.generationwork import Generations

RootError = _roots.RootError


def built_from(work, marker):
    """The generation (a number of ``work``'s bakeform) a root's marker says it was built from; None if gone.

    A marker made before generations names its bakeform's content (``bakeform_sha256``) instead.
    """
    number = marker.get('generation')
    if isinstance(number, int) and not isinstance(number, bool):
        return number if number in work.ids() else None
    return next((number for number in work.ids()
                 if work.index['generations'][str(number)].get('sha256') == marker.get('bakeform_sha256')), None)


class CapturePlan:
    """The capture of one Pi's root into the next generation of ``work``'s bakeform."""

    def __init__(self, host, work, roots_dir, spec):
        self.host, self.work = host, work
        try:
            self.serial = normalise_serial(spec['serial'])
        except ValueError as exc:
            raise RootError('capture: %s' % exc) from None
        self.layout = _roots.Layout(roots_dir, self.serial)
        self.marker = _roots.load_marker(self.layout.marker)
        if not self.marker or not self.marker.get('bakeform') or not os.path.isfile(self.layout.image):
            raise RootError('capture: Pi %s has no root made by pifleet.netboot.pi_root in %s (%s and its marker %s); '
                            'give the serial of a Pi that has one, and roots_dir where pi_root keeps them'
                            % (self.serial, roots_dir, self.layout.image, self.layout.marker))
        self.hostname = spec.get('hostname') or self.marker.get('hostname')
        self.who = 'Pi %s (%s)' % (self.hostname, self.serial) if self.hostname else 'Pi %s' % self.serial
        self.source, self.number = self.source_generation()
        self.origin = {'kind': 'capture', 'serial': self.serial, 'hostname': self.hostname,
                       'from': self.source.label(self.number)}
        self.report = None

    def source_generation(self):
        """(``generations.Bakeform``, number) of the generation the Pi's root was built from."""
        name = self.marker['bakeform']
        work = self.work if name == self.work.bakeform.name else Generations(
            self.host, self.work.bakeform.store, name).load()
        # Its own bakeform may still be of store format 2: this run migrates it first. Another one must be migrated.
        if work.layout != 'generations' and not (work is self.work and work.migrating):
            raise RootError('capture: the root of %s was built from bakeform %s, which is %s; run '
                            'pifleet.netboot.bakeform for %s once (it becomes generation 1), then capture'
                            % (self.who, name, 'of store format 2' if work.layout == 'format2' else
                               'not in %s' % work.bakeform.store, name))
        number = built_from(work, self.marker)
        if number is None:
            raise RootError('capture: the root of %s was built from bakeform %s (%s), which is no longer in the store '
                            '(its generations: %s)' % (self.who, name, self.marker.get('generation') or 'content %s'
                                                       % self.marker.get('bakeform_sha256'), work.listed()))
        if not self.host.check_mode:
            work.bakeform.require(number, 'the capture of %s' % self.who)
        return work.bakeform, number

    def planned(self):
        """The index entry check mode shows: the sha256 is known once the capture is made."""
        return {'sha256': None, 'created': None, 'source': self.layout.image, 'origin': self.origin}

    def make(self, scratch, generation):
        """Make generation ``generation`` in ``scratch/build``: (that directory, its manifest)."""
        name = self.work.bakeform.name
        built = scratch.join('build')
        os.mkdir(built, 0o755)
        root = os.path.join(built, ROOT_IMAGE)
        capture = _capture.Capture(self.host, self.layout, self.who)
        frozen = capture.copy(root)
        os.chmod(root, 0o600)
        Ingest(self.host.run, name).prepare_root(root)  # e2fsck is fine here: our kernel wrote it, never a Pi raw
        mnt = os.path.join(self.host.tmpdir, 'capture-%s' % self.serial)
        os.mkdir(mnt, 0o700)
        hostname = _capture.golden_hostname(self.host.run, self.source.root_image(self.number))
        changes = capture.scrub(root, mnt, hostname, self.marker)
        capture.new_uuid(root)
        manifest = Build(self.host.run, name, self.work.bakeform.store, source=self.layout.image).from_capture(
            built, generation, self.origin, self.source, self.number)
        self.report = dict(self.origin, frozen=frozen, taken_out=sorted({change['fix'] for change in changes}))
        return built, manifest
