"""Build of convirt's C core (csrc/) into the extension convirt._core.

BLIS (the OpenMP build, so that the core and BLIS share one libgomp thread pool) is
looked for, in order:
  1. BLIS_PREFIX, when set (an explicit choice wins): <prefix>/include[/blis], <prefix>/lib
  2. pkg-config blis
  3. Debian/Ubuntu's libblis-openmp-dev: /usr/include/<triplet>/blis-openmp and
     /usr/lib/<triplet>/blis-openmp
The library's directory is written into the extension's RPATH, so it loads without
LD_LIBRARY_PATH. The BLIS build's list of sub-configurations (config.mk) is baked in,
so that the kernel choice at run time never names one that the library lacks.
"""

import glob
import os
import shlex
import subprocess
import sys
import sysconfig

import numpy
from setuptools import Extension, setup

INSTALL_HELP = """
convirt needs BLIS (with OpenMP threading) to build, and none was found.
Install it, then run pip again:
  Debian / Ubuntu:  sudo apt-get install libblis-openmp-dev pkg-config
  conda-forge:      conda install -c conda-forge blis
                    export BLIS_PREFIX="$CONDA_PREFIX"
  Homebrew:         brew install blis
                    export BLIS_PREFIX="$(brew --prefix blis)"
  From source:      ./configure --enable-threading=openmp --prefix=$HOME/blis auto
                    make -j && make install && export BLIS_PREFIX=$HOME/blis
Looked in: {looked}
"""


class Blis:
    def __init__(self, include_dir, library_dir, config_mk, how):
        self.include_dir = include_dir
        self.library_dir = library_dir
        self.config_mk = config_mk
        self.how = how

    def valid(self):
        return os.path.isfile(os.path.join(self.include_dir, "blis.h")) and any(
            glob.glob(os.path.join(self.library_dir, "libblis.*"))
        )

    def openmp(self):
        with open(os.path.join(self.include_dir, "blis.h"), errors="replace") as header:
            return "#define BLIS_ENABLE_OPENMP" in header.read()

    def configs(self):
        """The sub-configurations this BLIS build contains, from its config.mk."""
        if not self.config_mk or not os.path.isfile(self.config_mk):
            return ""
        with open(self.config_mk) as f:
            for line in f:
                if line.startswith("CONFIG_LIST"):
                    return " ".join(line.split(":=", 1)[1].split())
        return ""


def _multiarch():
    triplet = sysconfig.get_config_var("MULTIARCH")
    if triplet:
        return triplet
    try:
        return subprocess.check_output(["gcc", "-print-multiarch"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "x86_64-linux-gnu"


def _from_prefix(prefix, how):
    include = os.path.join(prefix, "include", "blis")
    if not os.path.isfile(os.path.join(include, "blis.h")):
        include = os.path.join(prefix, "include")
    return Blis(include, os.path.join(prefix, "lib"),
                os.path.join(prefix, "share", "blis", "config.mk"), how)


def _pkg_config():
    try:
        out = subprocess.check_output(
            ["pkg-config", "--variable=prefix", "--variable=includedir",
             "--variable=libdir", "blis"], text=True, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError):
        return None
    words = out.split()
    if len(words) < 3:
        return None
    prefix, includedir, libdir = words[:3]
    include = os.path.join(includedir, "blis")
    if not os.path.isfile(os.path.join(include, "blis.h")):
        include = includedir
    return Blis(include, libdir, os.path.join(prefix, "share", "blis", "config.mk"),
                "pkg-config blis")


def find_blis():
    candidates = []
    if os.environ.get("BLIS_PREFIX"):
        candidates.append(_from_prefix(os.environ["BLIS_PREFIX"], "BLIS_PREFIX"))
    found = _pkg_config()
    if found:
        candidates.append(found)
    triplet = _multiarch()
    candidates.append(Blis(f"/usr/include/{triplet}/blis-openmp",
                           f"/usr/lib/{triplet}/blis-openmp",
                           f"/usr/share/blis-openmp-{triplet}/config.mk",
                           "Debian's libblis-openmp-dev"))
    valid = [c for c in candidates if c.valid()]
    # Prefer an OpenMP build; take any BLIS over none.
    for blis in valid:
        if blis.openmp():
            return blis
    if valid:
        print(f"convirt: warning: {valid[0].how} is not an OpenMP build of BLIS; "
              "BLIS and the core will not share a thread pool", file=sys.stderr)
        return valid[0]
    looked = "; ".join(f"{c.how}: {c.include_dir}, {c.library_dir}" for c in candidates)
    sys.exit(INSTALL_HELP.format(looked=looked))


def extension():
    blis = find_blis()
    configs = blis.configs()
    # -fno-trapping-math lets GCC vectorise the branch-free exp (no FP traps are used).
    cflags = ["-std=gnu11", "-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
              "-fvisibility=hidden",
              "-Wall", "-Wextra", "-Wno-unused-parameter"]
    if os.environ.get("CONVIRT_ALLOW_WARNINGS") != "1":
        cflags.append("-Werror")
    extra = shlex.split(os.environ.get("CONVIRT_CFLAGS", ""))
    cflags += extra
    print(f"convirt: BLIS from {blis.how}: {blis.include_dir}, {blis.library_dir}; "
          f"sub-configurations: {configs or 'unknown'}", file=sys.stderr)
    sources = sorted(glob.glob("csrc/*.c")) + sorted(glob.glob("csrc/py/*.c"))
    return Extension(
        "convirt._core",
        sources=sources,
        include_dirs=["csrc"],
        library_dirs=[blis.library_dir],
        runtime_library_dirs=[blis.library_dir],
        libraries=["blis", "m"],
        define_macros=[("CV_BLIS_CONFIGS", f'"{configs}"'),
                       ("CV_BUILD_CFLAGS", '"' + " ".join(cflags) + '"')],
        # Third-party headers as system headers: their warnings are not ours.
        extra_compile_args=cflags + ["-isystem", blis.include_dir,
                                     "-isystem", numpy.get_include()],
        extra_link_args=["-fopenmp"],
        depends=sorted(glob.glob("csrc/*.h")) + sorted(glob.glob("csrc/py/*.h")),
    )


setup(ext_modules=[extension()])
