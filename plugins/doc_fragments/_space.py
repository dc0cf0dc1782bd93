# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The space check of the modules that make Pi images (see module_utils/pistate/space.py).
    DOCUMENTATION = r"""
options:
  overcommit:
    description:
      - How far the Pi images on the data file system may promise more than it holds. Roots are reflink clones
        and disks sparse files, so they take little at first and up to their size once their Pis fill them.
        Before a root or disks file system is made or grown, the worst case (what is in use now, plus what
        every Pi image on that file system, the new one included, can still take when filled) must fit in
        O(overcommit) times the file system's size (less a little kept back for its own metadata); otherwise
        that Pi fails with the numbers and the ways out.
      - V(1.0) (the default) promises nothing the file system does not hold, so a Pi that fills its own file
        systems never leaves another Pi without space (and I/O errors on its loop device). Above 1.0 more Pis fit,
        betting that they never all fill up; the bakery then needs its free space watched.
      - Pis that only keep what they have (fixed, mounted, unchanged, removed) are never refused.
    type: float
    default: 1.0
  allow_root_filesystem:
    description:
      - Allow the Pis' directories (and the bakeform store) on the bakery's own root file system C(/). Refused by
        default, as Pis filling their file systems would fill the file system the bakery needs to run.
    type: bool
    default: false
  space_dirs:
    description:
      - Other directories of Pi images whose worst case counts too when they lie on the same file system (the
        fleet role passes the disks directory to M(pifleet.netboot.pi_root) and the roots directory to
        M(pifleet.netboot.pi_disk)).
    type: list
    elements: path
    default: []
"""
