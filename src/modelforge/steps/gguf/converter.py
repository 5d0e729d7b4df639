"""The pinned llama.cpp converter: `convert_hf_to_gguf.py`, its `conversion` package and the gguf-py it
was released with, taken from the llama-cpp-python source distribution whose sha256 is pinned here (the
sdist that tools/setup.sh compiles llama_cpp from), so the converter and the runtime come from one
llama.cpp commit. The registry's gguf 0.19.0 is older than this converter (it lacks MODEL_ARCH.DFLASH,
which the converter's import needs), so the vendored gguf-py is the one used. Imports only the stdlib,
modelforge.errors and modelforge.hashing."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

from modelforge.errors import StepFailed
from modelforge.hashing import hash_file

LLAMA_CPP_PYTHON = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VENDOR = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
# What the converter needs from vendor/llama.cpp: the script, the package of model classes it imports,
# its own gguf-py (the script puts it first on sys.path) and the licence that ships with them.
MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
SCRIPT = "convert_hf_to_gguf.py"
COMPLETE = ".complete"


def cache_root() -> Path:
    """$MODELFORGE_TOOLS_CACHE, else modelforge's user cache directory (where tools/setup.sh puts the sdist)."""
    if os.environ.get("MODELFORGE_TOOLS_CACHE"):
        return Path(os.environ["MODELFORGE_TOOLS_CACHE"])
    from platformdirs import user_cache_path

    return user_cache_path("modelforge") / "tools"


def sdist_path() -> Path:
    """$MODELFORGE_LLAMA_CPP_SDIST, else the copy tools/setup.sh downloads into the tools cache."""
    return Path(os.environ.get("MODELFORGE_LLAMA_CPP_SDIST") or cache_root() / "sdist" / SDIST_NAME)


def converter_dir() -> Path:
    """The extracted converter, keyed by the sdist's hash: extracted once, checked against the pin first.
    A crash while extracting leaves a temporary directory, never a half-filled converter."""
    target = cache_root() / "gguf-converter" / SDIST_SHA256[:16]
    if (target / COMPLETE).is_file() and (target / COMPLETE).read_text().strip() == SDIST_SHA256:
        return target
    sdist = sdist_path()
    if not sdist.is_file():
        raise StepFailed(f"the llama.cpp converter's source {sdist} is missing; run tools/setup.sh (it downloads llama-cpp-python=={LLAMA_CPP_PYTHON}'s sdist there) or set MODELFORGE_LLAMA_CPP_SDIST")
    actual = hash_file(sdist)
    if actual != SDIST_SHA256:
        raise StepFailed(f"{sdist} has sha256 {actual}, not the pinned {SDIST_SHA256} of llama-cpp-python {LLAMA_CPP_PYTHON}; delete it and run tools/setup.sh")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    with tarfile.open(sdist, "r:gz") as archive:
        wanted = []
        for member in archive.getmembers():
            if not member.name.startswith(VENDOR):
                continue
            relative = member.name[len(VENDOR):]
            if not any(relative == item or (item.endswith("/") and relative.startswith(item)) for item in MEMBERS):
                continue
            if not (member.isfile() or member.isdir()):
                raise StepFailed(f"{sdist}: {member.name} is neither a file nor a directory; the sdist is not the pinned one")
            member = member.replace(name=relative)
            wanted.append(member)
        archive.extractall(temporary, members=wanted, filter="data")
    if not (temporary / SCRIPT).is_file() or not (temporary / "gguf-py" / "gguf" / "__init__.py").is_file():
        raise StepFailed(f"{sdist} holds no {VENDOR}{SCRIPT} with its gguf-py; the sdist is not the pinned one")
    (temporary / COMPLETE).write_text(SDIST_SHA256 + "\n")
    try:
        os.replace(temporary, target)
    except OSError:  # another process extracted it first: theirs is as good
        shutil.rmtree(temporary, ignore_errors=True)
        if not (target / COMPLETE).is_file():
            raise
    return target


def script() -> Path:
    return converter_dir() / SCRIPT
