# Copyright: (c) 2026, pifleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What AWX does around a job, as far as the tests need it: a custom credential's injectors."""

from __future__ import annotations

from jinja2.sandbox import ImmutableSandboxedEnvironment


def awx_inject(credential_type, inputs, private_data_dir):
    """The environment an AWX job gets from a custom credential, as AWX documents its injectors.

    Each ``file`` template is rendered (sandboxed Jinja) into a file of its own, mode 0600, in the job's private
    ``env`` directory, and ``template.<label>`` is then ``tower.filename.<label>`` in the ``env`` templates; a field
    of format ``ssh_private_key`` gets the trailing newline OpenSSH needs; empty fields are undefined.
    """
    sandbox = ImmutableSandboxedEnvironment()
    namespace = {key: value for key, value in inputs.items() if value != ''}
    for field in credential_type['inputs']['fields']:
        if field.get('format') == 'ssh_private_key' and not namespace.get(field['id'], '\n').endswith('\n'):
            namespace[field['id']] += '\n'
    filenames = {}
    for label, template in credential_type['injectors'].get('file', {}).items():
        path = private_data_dir / 'env' / label.split('.', 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sandbox.from_string(template).render(**namespace))
        path.chmod(0o600)
        filenames[label.split('.', 1)[1]] = str(path)
    namespace['tower'] = {'filename': filenames}
    return {name: sandbox.from_string(template).render(**namespace)
            for name, template in credential_type['injectors']['env'].items()}
