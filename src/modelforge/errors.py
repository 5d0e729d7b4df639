"""Error types modelforge reports to users. Every message is one line that names the offending
value and ends with what to do; `cli` maps these to exit codes. Imports nothing of modelforge."""


class ModelforgeError(Exception):
    """Base of every error modelforge reports to a user; the message is one line ending with what to do."""

    exit_code = 1

    def __init__(self, message: str):
        if not message:
            raise ValueError("a ModelforgeError needs a message")
        super().__init__(message)


class ManifestError(ModelforgeError):
    """The manifest cannot be read or is invalid."""

    exit_code = 2


class PlanError(ModelforgeError):
    """The manifest is valid but cannot be planned against this source (rules, coverage, targets)."""

    exit_code = 3


class SourceError(ModelforgeError):
    """A source file is missing, unreadable, or does not match the lock or the Hub's hash."""

    exit_code = 4


class HubError(SourceError):
    """The Hub (or the local Hub cache in offline mode) could not give what was asked."""


class HubUnavailableError(HubError):
    """The Hub cannot be reached (no network, or offline mode) and the Hugging Face cache lacks what is needed."""


class StepFailed(ModelforgeError):
    """A step failed because of the user's model or the toolchain (not modelforge itself)."""

    exit_code = 5


class LockError(ModelforgeError):
    """The lockfile is missing, unreadable, out of date, or artifacts do not match it."""

    exit_code = 6


class StoreError(ModelforgeError):
    """The store is unusable (permissions, disk full, damaged objects that cannot be rebuilt)."""

    exit_code = 7


class ConfigError(ManifestError):
    """The project's modelforge.toml, a cache URL or a key file is invalid."""


class RemoteError(StoreError):
    """The remote cache cannot be reached, refused a request, or lacks what a lock needs."""


class ClusterError(ModelforgeError):
    """The Ray cluster is not installed, cannot be reached, or lost a step's workers beyond its retries."""

    exit_code = 8


class ProvenanceError(LockError):
    """Signed provenance is missing, unsigned, signed by another key, or does not match the files."""
