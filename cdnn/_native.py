"""The compiled kernels: the AVX2 build where the CPU has AVX2, else the portable one.

setup.py builds src/_network.pyx (the engine) and src/_testing.pyx (wrappers only the tests
call) for any x86-64 CPU (cdnn._network, cdnn._testing) and, on x86-64, the engine again with
AVX2 (cdnn._network_avx2). The two compute the same bits (tests/test_native.py checks it), so
the test wrappers have the portable build only; the AVX2 build's element-wise loops are twice
as wide. The environment variable CDNN_KERNELS chooses: "auto" (the default: the fastest this
CPU runs), "portable" or "avx2" (an error where that build cannot run).
"""
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path


def _portable():
    from cdnn import _network
    return _network


def _use_installed_kernels_in_a_source_tree():
    """A source tree (a script run in the checkout: its folder comes first on sys.path) has the
    package but not the compiled modules. The kernels of the same version, installed from this
    checkout, serve it; otherwise Python would call the failed import a circular one, which
    sends users astray."""
    here = Path(__file__).parent
    if any((here / f"_network{suffix}").exists() for suffix in EXTENSION_SUFFIXES):
        return
    installed = _installed_kernels(here)
    if installed is None:
        raise ImportError(f"cdnn's compiled kernels are missing from {here}: this is the "
                          "source tree; build it in place (pip install -e .) or run from "
                          "another folder so that the installed cdnn is imported")
    import cdnn
    cdnn.__path__.append(str(installed))


def _installed_kernels(source: Path):
    """The folder of an installed cdnn of this version with compiled kernels, other than the
    source tree's; None where there is none."""
    from importlib.metadata import PackageNotFoundError, distribution
    from cdnn._version import __version__
    try:
        dist = distribution("cdnn")
    except PackageNotFoundError:
        return None
    folder = Path(dist.locate_file("cdnn"))
    if (dist.version != __version__ or not folder.is_dir()
            or folder.resolve() == source.resolve()):
        return None
    if not any((folder / f"_network{suffix}").exists() for suffix in EXTENSION_SUFFIXES):
        return None
    return folder


CHOICES = ("auto", "portable", "avx2")


def _cpu_has_avx2() -> bool:
    """numpy's reading of the CPU (and whether its OS saves the AVX registers), so that the
    portable engine need not be loaded to ask: one engine per process, one pool for
    threadpoolctl to list; the portable engine's own check where numpy has none."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__   # numpy < 2
        except ImportError:
            __cpu_features__ = {}
    if "AVX2" in __cpu_features__:
        return bool(__cpu_features__["AVX2"])
    return _portable().cpu_supports_avx2()


def _avx2_build():
    """The AVX2 engine, or why this machine cannot run it"""
    if not _cpu_has_avx2():
        return "this CPU (or its OS) does not support AVX2"
    try:
        from cdnn import _network_avx2
    except ImportError:     # another architecture, or a compiler without -mavx2
        return "this installation of cdnn has no AVX2 build"
    return _network_avx2


_use_installed_kernels_in_a_source_tree()
_choice = os.environ.get("CDNN_KERNELS", "") or "auto"
if _choice not in CHOICES:
    raise ValueError(f"CDNN_KERNELS={_choice!r}: choose one of {', '.join(CHOICES)}")
VARIANT = "portable"
_avx2 = _avx2_build() if _choice != "portable" else "CDNN_KERNELS=portable"
if not isinstance(_avx2, str):
    _network = _avx2
    VARIANT = "avx2"
elif _choice == "avx2":
    raise RuntimeError(f"CDNN_KERNELS=avx2, but {_avx2}; unset it or choose 'portable'")
else:
    _network = _portable()


def testing_kernels():
    """The test-only kernel wrappers, the portable build (imported on demand, so that
    production never loads them)."""
    from cdnn import _testing
    return _testing


__all__ = ["VARIANT", "_network", "testing_kernels"]
