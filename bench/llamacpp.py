"""llama.cpp's own tools, built from the llama.cpp that the installed llama-cpp-python vendors: the references
of the engine benchmarks (issue 14) and of the serve benchmark.

The source is llama-cpp-python's source distribution of exactly the installed version (its tarball carries
``vendor/llama.cpp``): taken from ``bench/.build/`` if it is there, else from pip's download cache, else
``pip download --no-deps --no-binary :all:``. It is unpacked into ``bench/.build/`` (git-ignored, never
committed) and only the targets asked for are built, Release, ``GGML_NATIVE=ON`` (as llama-cpp-python's own
build of the same source is), static, without curl/OpenSSL, tests, examples or the web UI (whose prebuilt
assets would be downloaded). Needs cmake and g++ (Debian: ``apt-get install cmake g++``). The first build of
the three tools takes several minutes on 2 cores; after that a call only checks that the binaries exist.

    .venv/bin/python bench/llamacpp.py [--target llama-server ...]   # build what is missing, print the paths

From another bench: ``from llamacpp import binary; binary("llama-bench")``.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = HERE / ".build"
TARGETS = ("llama-server", "llama-bench", "llama-batched-bench")
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
               "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF",
               "-DLLAMA_USE_PREBUILT_UI=OFF"]


def version() -> str:
    return metadata.version("llama-cpp-python")


def source_dir() -> Path:
    return BUILD / f"llama_cpp_python-{version()}" / "vendor" / "llama.cpp"


def build_dir() -> Path:
    return BUILD / f"build-{version()}"


def _sdist() -> Path:
    name = f"llama_cpp_python-{version()}.tar.gz"
    here = BUILD / name
    if here.exists():
        return here
    BUILD.mkdir(parents=True, exist_ok=True)
    cached = glob.glob(os.path.expanduser(f"~/.cache/pip/**/{name}"), recursive=True)
    if cached:
        shutil.copy(cached[0], here)
        return here
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(BUILD),
                    f"llama-cpp-python=={version()}"], check=True)
    return here


def _unpack() -> Path:
    src = source_dir()
    if (src / "CMakeLists.txt").exists():
        return src
    prefix = f"llama_cpp_python-{version()}/vendor/llama.cpp/"
    with tarfile.open(_sdist()) as tar, tempfile.TemporaryDirectory(dir=BUILD) as tmp:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(tmp, members=members, filter="data")
        target = src.parent
        target.mkdir(parents=True, exist_ok=True)
        os.replace(Path(tmp) / prefix, src)  # whole or not at all
    return src


def path(target: str) -> Path:
    return build_dir() / "bin" / target


def build(targets: tuple[str, ...] = TARGETS, jobs: int = 2) -> dict[str, float]:
    """Configure (once) and build the missing targets; returns the seconds each step took."""
    for name in shutil.which("cmake"), shutil.which("g++"):
        if name is None:
            raise SystemExit("cmake and g++ are needed to build llama.cpp's tools: apt-get install cmake g++")
    missing = [t for t in targets if not path(t).exists()]
    if not missing:
        return {}
    times: dict[str, float] = {}
    start = time.perf_counter()
    src = _unpack()
    times["unpack_s"] = time.perf_counter() - start
    out = build_dir()
    nice = ["nice", "-n", "10"]
    if not (out / "CMakeCache.txt").exists():
        start = time.perf_counter()
        subprocess.run([*nice, "cmake", "-S", str(src), "-B", str(out), *CMAKE_FLAGS], check=True,
                       stdout=subprocess.DEVNULL)
        times["configure_s"] = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([*nice, "cmake", "--build", str(out), "--target", *missing, f"-j{jobs}"], check=True,
                   stdout=subprocess.DEVNULL)
    times["build_s"] = time.perf_counter() - start
    return times


def binary(target: str) -> Path:
    """The path of one of llama.cpp's tools, built first if missing."""
    if not path(target).exists():
        build((target,))
    return path(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", action="append", choices=TARGETS, help="default: all three")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    args = parser.parse_args()
    times = build(tuple(args.target or TARGETS), args.jobs)
    for key, seconds in times.items():
        print(f"{key}: {seconds:.0f}", file=sys.stderr)
    for target in args.target or TARGETS:
        print(path(target))


if __name__ == "__main__":
    main()
