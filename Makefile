# pifleet.netboot — set-up, tests, demo and benchmarks.
# `make demo` and `make test` each set themselves up on a fresh Debian 12 host (as root).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
BUILD := $(CURDIR)/.build
# The collection must be importable as ansible_collections/pifleet/netboot: a symlink for running,
# a copy for ansible-test (which insists on the real path).
COLLECTIONS := $(BUILD)/collections
SANITY_TREE := $(BUILD)/sanity/ansible_collections/pifleet/netboot
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH := false
export ANSIBLE_NOCOLOR := 1
export ANSIBLE_FORCE_COLOR := 0
export PYTHONPATH := $(COLLECTIONS)
export PATH := $(VENV)/bin:$(PATH)

# Debian packages the tests, demo and modules use (installed only when missing). The real boot needs
# mmdebstrap + qemu-user-static/binfmt-support/arch-test (arm64 images; kmod, zstd and openssl do their
# depmod, tree cache and certificate store natively) and qemu-system-arm + u-boot-qemu; the boot metrics tests
# promtool (prometheus) and a real node_exporter; a simulated Pi's SSH server is dropbear (no service).
APT_PACKAGES := python3-venv git mtools dosfstools fdisk e2fsprogs fuse2fs xz-utils fakeroot util-linux \
	attr libcap2-bin coreutils btrfs-progs xfsprogs openssh-client iproute2 \
	nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils nfs-kernel-server python3-netaddr \
	dnsmasq-base systemd-container debootstrap socat atftp snmpd snmp nftables logrotate \
	mmdebstrap qemu-user-static binfmt-support arch-test qemu-system-arm u-boot-qemu kmod zstd openssl \
	prometheus prometheus-node-exporter dropbear-bin

# The other ansible-core versions meta/runtime.yml's requires_ansible allows, each in a venv of its own under
# .build/ (pinned in requirements-core-<version>.txt). Before 2.19 a core templates any plain string it meets,
# so the controller-side code is tested on each: the inventory plugin and filters, the discover, power and
# status playbooks, and the fleet role with site (modules run on the bakery, the same on every core).
# `make test` runs the oldest (2.17: the templating engine before 2.19's, which 2.18 shares) beside the newest in
# .venv; `make cores OLD_CORES="2.17 2.18"` runs both older ones (about 4 minutes each).
OLD_CORES ?= 2.17
# Two halves of about the same time (`make test` gives each to whichever lane is free first): the fleet role's file,
# and the rest.
CORE_TESTS_FLEET := tests/integration/test_fleet.py
CORE_TESTS_REST := tests/unit/plugins/inventory tests/unit/plugins/filter tests/unit/plugins/module_utils/fleet/test_events.py \
	tests/unit/plugins/module_utils/fleet/test_checks.py tests/integration/test_discover_playbook.py \
	tests/integration/test_playbooks.py tests/integration/test_fleet_hosts.py
CORE_TESTS := $(CORE_TESTS_REST) $(CORE_TESTS_FLEET)

.PHONY: help setup apt venv collection test test-lab test-rest test-rest-niced test-tail unit integration cores cores-rest cores-fleet tarball molecule ee release-notes sanity lint ruff demo bench \
	bench-bakeform bench-roots bench-rebuild bench-storm bench-scale bench-generations bench-upgrade clean

help:
	@echo "make demo   - set up, then site on the built-in lab: a bakery container, three simulated Pis and one that"
	@echo "              boots a real arm64 kernel (qemu); each step's time at the end"
	@echo "make test   - set up, then ruff, ansible-lint, ansible-test sanity, unit and integration tests (also on"
	@echo "              ansible-core 2.17 and 2.18: make cores), molecule"
	@echo "make unit | integration | cores | tarball | molecule | ee | release-notes | sanity | lint | ruff | bench | clean"

setup: apt venv collection

apt:
	@missing=(); for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$$p"); done; \
	if [ $${#missing[@]} -gt 0 ]; then \
	  echo "apt: installing $${missing[*]}"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$${missing[@]}" >/dev/null; \
	fi

venv: $(VENV)/.stamp

$(VENV)/.stamp: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

collection:
	@mkdir -p $(COLLECTIONS)/ansible_collections/pifleet
	@ln -sfn $(CURDIR) $(COLLECTIONS)/ansible_collections/pifleet/netboot

ruff: setup
	$(VENV)/bin/ruff check .

lint: setup
	$(VENV)/bin/ansible-lint --profile production --offline
	$(VENV)/bin/antsibull-changelog lint

# ansible-test bootstraps pip in its venvs from a download we cannot reach: give it a local stand-in.
sanity: setup
	@ver=$$(grep -oP "pip='\K[0-9.]+" $(VENV)/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py); \
	mkdir -p ~/.ansible/test/cache; cp tests/sanity/get_pip_standin.py ~/.ansible/test/cache/get_pip_$${ver//./_}.py
	rm -rf $(dir $(SANITY_TREE)); mkdir -p $(SANITY_TREE)
	git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C $(SANITY_TREE)
	cd $(SANITY_TREE) && git init -q && git add -A && \
	  env -u PYTHONPATH -u ANSIBLE_COLLECTIONS_PATH $(VENV)/bin/ansible-test sanity --venv --python 3.11 --color no

# Unit tests need only the venv: no root, no Debian packages (the few that need a tool or root skip without).
unit: venv collection
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

# The integration files, one after another (`make test` runs the lab's file beside the rest: LAB_TESTS).
# --durations names the slowest tests, so a test that grows shows in every run's log.
# OWN_MOUNTS: a mount namespace of its own (the host's / is often private, e.g. in CI containers). A process the other
# lane starts in a namespace of its own (ip netns exec, unshare, systemd-nspawn) copies every mount there is at that
# moment and keeps it until it ends, and a loop device the tests unmounted would stay attached through that copy.
OWN_MOUNTS := unshare --mount --propagation slave
PYTEST_INTEGRATION := $(OWN_MOUNTS) $(PY) -m pytest -q -p no:cacheprovider --durations=12
LAB_TESTS := tests/integration/test_labdemo.py
# The two longest integration files after the lab's (about 3.5 and 5.5 minutes): parts of TEST_TAIL in `make test`,
# so the lane that ends first takes them (they share no address, namespace or name with any other test file).
TAIL_INTEGRATION := two-bakeries fleet-fails-per-pi
integration: setup
	$(PYTEST_INTEGRATION) tests/integration

# One integration file alone (integration-two-bakeries runs tests/integration/test_two_bakeries.py).
$(TAIL_INTEGRATION:%=integration-%): integration-%: setup
	$(PYTEST_INTEGRATION) tests/integration/test_$(subst -,_,$*).py

$(BUILD)/core-%/.stamp: requirements-core-%.txt
	rm -rf $(@D)
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/python -m pip install --quiet --disable-pip-version-check -r $<
	touch $@

# The tests find ansible-playbook/ansible-inventory beside their own Python: each run uses that core.
cores: cores-rest cores-fleet

cores-rest cores-fleet: cores-%: setup $(OLD_CORES:%=$(BUILD)/core-%/.stamp)
	@for core in $(OLD_CORES); do \
	  echo "$@: ansible-core $$($(BUILD)/core-$$core/bin/python -c 'import ansible.release as r; print(r.__version__)')"; \
	  PATH=$(BUILD)/core-$$core/bin:$$PATH $(BUILD)/core-$$core/bin/python -m pytest -q -p no:cacheprovider \
	    $(if $(filter fleet,$*),$(CORE_TESTS_FLEET),$(CORE_TESTS_REST)) || exit 1; \
	done

# The user's path: the collection tarball built, installed into a temp collections dir and used with no checkout on
# any path (ansible-doc of every plugin and role, ansible-builder introspect, site --check --diff with the example
# inventory as shipped on a fresh bakery container), and the AWX project of docs/awx.md run with ansible-runner
# (site --check, status with the vault password, both inventory sources through ansible-inventory --export).
# The files run side by side (pytest-xdist, one file per worker): each of the two bakery files has its own
# container and lab LAN, and each spends most of its time in one site --check run.
tarball: setup
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=8 tests/tarball

# Molecule scenarios converge the roles on real systemd-nspawn test hosts (lab/nspawnlab.py).
molecule: setup
	@for scenario in molecule/*/molecule.yml; do \
	  scenario=$${scenario#molecule/}; $(VENV)/bin/molecule test -s $${scenario%/molecule.yml} || exit 1; \
	done

# The AWX execution environment's build context (ansible-builder create; `build` needs a container engine): the
# same two commands a user runs, no renaming in between.
ee: setup
	@rm -rf $(BUILD)/ee; mkdir -p $(BUILD)/ee
	$(VENV)/bin/ansible-galaxy collection build --output-path $(BUILD)/ee . >/dev/null
	$(VENV)/bin/ansible-builder create -f execution-environment.yml -c $(BUILD)/ee/context --output-filename Containerfile
	@grep -q 'ln -s "$$1" /build/pifleet-netboot.tar.gz' $(BUILD)/ee/context/Containerfile
	@grep -q 'introspect.py introspect' $(BUILD)/ee/context/Containerfile
	@test -f $(BUILD)/ee/context/_build/collection/pifleet-netboot-$$(sed -n 's/^version: *//p' galaxy.yml).tar.gz
	@echo "ee: build context in $(BUILD)/ee/context"

# What `antsibull-changelog release` writes for the version in galaxy.yml (CHANGELOG.rst and changelogs/changelog.yaml),
# made on a copy of the tree in RELEASE_DIR: nothing in the checkout changes. To release, run the same command in the
# checkout (antsibull-changelog release --version <galaxy.yml's version>), commit, tag, then build the tarball.
RELEASE_DIR ?= $(BUILD)/release
release-notes: venv
	@rm -rf $(RELEASE_DIR); mkdir -p $(RELEASE_DIR)/ansible_collections/pifleet/netboot
	@git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - \
	  | tar -xf - -C $(RELEASE_DIR)/ansible_collections/pifleet/netboot
	cd $(RELEASE_DIR)/ansible_collections/pifleet/netboot && ANSIBLE_COLLECTIONS_PATH=$(RELEASE_DIR) \
	  PYTHONPATH=$(RELEASE_DIR) $(VENV)/bin/antsibull-changelog release --version $$(sed -n 's/^version: *//p' galaxy.yml)
	@echo "release-notes: $(RELEASE_DIR)/ansible_collections/pifleet/netboot/CHANGELOG.rst"

# `make test` runs two lanes at once, one per core, and fails when either fails (each stops at its first failure):
# - the lab lane: LAB_TESTS (the real boots: mostly one emulated CPU and waits; on a cold run the real images
#   build first), then molecule (its test hosts run NFS-Ganesha in containers, as the lab's bakery does: the two
#   never overlap), the tarball and sanity; its output goes to $(BUILD)/test-lab.log and is shown when the lane ends;
# - the rest lane, on the terminal: ruff, ansible-lint, unit, the other integration files (at a lower CPU priority:
#   nice 10);
# - then TEST_TAIL (the two longest integration files of the rest, the older cores, the execution environment, the
#   release notes), each part taken by whichever lane is done first (a claim: mkdir under $(BUILD)/test-claims), the
#   longest parts first; the older cores come in two halves of about 3 minutes each (cores-fleet, cores-rest). The
#   lanes' own work differs by many minutes from one machine to another (in CI the lab lane ended some 15 minutes
#   before the rest lane, here about 6), so the tail holds about that much work: neither core sits idle while the
#   other lane still works.
# Each lane runs in a mount namespace of its own (OWN_MOUNTS), so neither holds the other's mounts.
# Every part can still be run alone (make unit, make integration, ...).
LAB_LOG := $(BUILD)/test-lab.log
TEST_TAIL := $(TAIL_INTEGRATION:%=integration-%) cores-fleet cores-rest ee release-notes
CLAIMS := $(BUILD)/test-claims
test: setup
	@rm -rf $(CLAIMS); mkdir -p $(CLAIMS)
	@$(MAKE) --no-print-directory -j2 test-lab test-rest-niced SHARED_TAIL=1

# Each part of TEST_TAIL that the other lane has not claimed yet, in order (mkdir is the atomic claim); a lane run on
# its own (make test-rest) runs them all.
test-tail:
	@for part in $(TEST_TAIL); do \
	  if [ -z "$(SHARED_TAIL)" ] || mkdir $(CLAIMS)/$$part 2>/dev/null; then \
	    echo "test-tail: $$part (claimed by $(LANE))"; $(MAKE) --no-print-directory -j1 $$part || exit 1; \
	  fi; \
	done

# The lab's boots have timeouts: the rest yields the CPU to them when both want it.
test-rest-niced:
	@nice -n 10 $(OWN_MOUNTS) $(MAKE) --no-print-directory -j1 test-rest

# -rP: the lab test's output (the demo's phases, each real boot's stages, the timings per step) is in the log even
# when every test passes, so a lab lane that grows says where.
test-lab: setup
	@echo "test-lab: $(LAB_TESTS), molecule, tarball, sanity, then its share of $(TEST_TAIL) (output in $(LAB_LOG), shown when the lane ends)"
	@mkdir -p $(BUILD); start=$$(date +%s); rc=0; \
	$(OWN_MOUNTS) sh -c '$(PYTEST_INTEGRATION) -rP $(LAB_TESTS) && $(MAKE) --no-print-directory -j1 molecule tarball sanity \
	  && $(MAKE) --no-print-directory test-tail LANE=lab' \
	  >$(LAB_LOG) 2>&1 || rc=$$?; \
	echo "===== test-lab: rc $$rc after $$(( $$(date +%s) - start )) s; its output:"; cat $(LAB_LOG); exit $$rc

test-rest: ruff lint unit
	$(PYTEST_INTEGRATION) $(LAB_TESTS:%=--ignore=%) \
	  $(foreach part,$(TAIL_INTEGRATION),--ignore=tests/integration/test_$(subst -,_,$(part)).py) tests/integration
	@$(MAKE) --no-print-directory test-tail LANE=rest

# The main job on the built-in lab (as root): a bakery in a systemd-nspawn container, three simulated Pis
# and a real one (qemu) on a namespace LAN; site with inventories/lab (while the real image builds, the first
# time), the Pis boot, the status table, the lab goes down; each step's time is printed at the end.
# DEMO_ARGS=--keep leaves the lab running (lab/demo.py says how to take it down).
demo: setup
	$(PY) -m lab.demo $(DEMO_ARGS)

# Benchmarks report ratios against a baseline timed in the same run (results in .build/bench/).
bench: bench-bakeform bench-roots bench-storm bench-scale

bench-bakeform: setup
	$(PY) bench/bench_bakeform.py $(BENCH_ARGS)

bench-roots: setup
	$(PY) bench/bench_roots.py $(BENCH_ARGS)

bench-rebuild: setup
	$(PY) bench/bench_rebuild.py $(BENCH_ARGS)

bench-storm: setup
	$(PY) bench/bench_storm.py $(BENCH_ARGS)

bench-scale: setup
	$(PY) bench/bench_scale.py $(BENCH_ARGS)

bench-generations: setup
	$(PY) bench/bench_generations.py $(BENCH_ARGS)

bench-upgrade: setup
	$(PY) bench/bench_upgrade.py $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) tests/output
