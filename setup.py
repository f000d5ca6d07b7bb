"""Build of convirt's C core (csrc/) and of its two Python bindings.

  convirt/libconvirt.so  the C core, csrc/*.c: no Python inside, on BLIS and OpenMP
  convirt._core          the package's extension, csrc/py/: the types and functions
                         that convirt exports
  convirt._testing       the tests' extension, csrc/testing/: the core's layers one at a
                         time and its naive reference kernels

The core is compiled once, into a shared library beside the two extensions, which link
it with RPATH $ORIGIN. A process therefore holds one copy of the core's state whichever
module calls it: the BLIS kernel set that cv_init chooses once, the thread count that
convirt.set_num_threads sets, the last error message and the ResNet profile. (With the
core compiled into each extension, convirt._testing would keep its own thread count,
which convirt.set_num_threads could not reach.) The library exports the core's C API;
-Bsymbolic binds the core's calls to itself, never to a namesake in another library.

BLIS (the OpenMP build, so that the core and BLIS share one libgomp thread pool) is
looked for, in order:
  1. BLIS_PREFIX, when set (an explicit choice wins): <prefix>/include[/blis], <prefix>/lib
  2. pkg-config blis
  3. Debian/Ubuntu's libblis-openmp-dev: /usr/include/<triplet>/blis-openmp and
     /usr/lib/<triplet>/blis-openmp
The library's directory is written into libconvirt's RPATH, so it loads without
LD_LIBRARY_PATH. The BLIS build's list of sub-configurations (config.mk) is baked in,
so that the kernel choice at run time never names one that the library lacks.

Compiler warnings (-Wall -Wextra) are errors only when CONVIRT_WERROR=1, as CI sets it:
a newer compiler's new warning must not break a user's pip install. CONVIRT_CFLAGS adds
flags (the sanitizer build uses it).
"""

import glob
import os
import shlex
import subprocess
import sys
import sysconfig

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.modified import newer_group
except ImportError:  # setuptools < 69
    from distutils.dep_util import newer_group

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
    return Blis(
        include,
        os.path.join(prefix, "lib"),
        os.path.join(prefix, "share", "blis", "config.mk"),
        how,
    )


def _pkg_config():
    try:
        out = subprocess.check_output(
            [
                "pkg-config",
                "--variable=prefix",
                "--variable=includedir",
                "--variable=libdir",
                "blis",
            ],
            text=True,
            stderr=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    words = out.split()
    if len(words) < 3:
        return None
    prefix, includedir, libdir = words[:3]
    include = os.path.join(includedir, "blis")
    if not os.path.isfile(os.path.join(include, "blis.h")):
        include = includedir
    return Blis(
        include,
        libdir,
        os.path.join(prefix, "share", "blis", "config.mk"),
        "pkg-config blis",
    )


def find_blis():
    candidates = []
    if os.environ.get("BLIS_PREFIX"):
        candidates.append(_from_prefix(os.environ["BLIS_PREFIX"], "BLIS_PREFIX"))
    found = _pkg_config()
    if found:
        candidates.append(found)
    triplet = _multiarch()
    candidates.append(
        Blis(
            f"/usr/include/{triplet}/blis-openmp",
            f"/usr/lib/{triplet}/blis-openmp",
            f"/usr/share/blis-openmp-{triplet}/config.mk",
            "Debian's libblis-openmp-dev",
        )
    )
    valid = [c for c in candidates if c.valid()]
    # Prefer an OpenMP build; take any BLIS over none.
    for blis in valid:
        if blis.openmp():
            return blis
    if valid:
        print(
            f"convirt: warning: {valid[0].how} is not an OpenMP build of BLIS; "
            "BLIS and the core will not share a thread pool",
            file=sys.stderr,
        )
        return valid[0]
    looked = "; ".join(f"{c.how}: {c.include_dir}, {c.library_dir}" for c in candidates)
    sys.exit(INSTALL_HELP.format(looked=looked))


CORE_LIBRARY = "convirt"  # convirt/libconvirt.so
CORE_FILE = f"lib{CORE_LIBRARY}.so"
CORE_SOURCES = sorted(glob.glob("csrc/*.c"))
CORE_HEADERS = sorted(glob.glob("csrc/*.h"))
if sys.platform == "darwin":  # not tried: the core is built and tested on Linux
    ORIGIN = "@loader_path"
    CORE_LINK_ARGS = [f"-Wl,-install_name,@rpath/{CORE_FILE}"]
    EXT_LINK_ARGS = [f"-Wl,-rpath,{ORIGIN}"]
else:
    ORIGIN = "$ORIGIN"
    CORE_LINK_ARGS = [f"-Wl,-soname,{CORE_FILE}", "-Wl,-Bsymbolic"]
    EXT_LINK_ARGS = []


def compile_flags():
    # -fno-trapping-math lets GCC vectorise the branch-free exp (no FP traps are used).
    flags = [
        "-std=gnu11",
        "-O3",
        "-fopenmp",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
    ]
    if os.environ.get("CONVIRT_WERROR") == "1":
        flags.append("-Werror")
    return flags + shlex.split(os.environ.get("CONVIRT_CFLAGS", ""))


class BuildCoreAndExtensions(build_ext):
    """build_ext that first builds the C core into libconvirt.so beside the extensions
    (in the build tree, and copied into the source tree with --inplace), then the
    extensions that link it."""

    def core_path(self):
        return os.path.join(self.build_lib, "convirt", CORE_FILE)

    def core_inplace_path(self):
        package_dir = self.get_finalized_command("build_py").get_package_dir("convirt")
        return os.path.join(package_dir, CORE_FILE)

    def build_core(self):
        blis = find_blis()
        configs = blis.configs()
        print(
            f"convirt: BLIS from {blis.how}: {blis.include_dir}, {blis.library_dir}; "
            f"sub-configurations: {configs or 'unknown'}",
            file=sys.stderr,
        )
        path = self.core_path()
        if not (self.force or newer_group(CORE_SOURCES + CORE_HEADERS, path, "newer")):
            return
        cflags = compile_flags()
        objects = self.compiler.compile(
            CORE_SOURCES,
            output_dir=self.build_temp,
            include_dirs=["csrc"],
            macros=[
                ("CV_BLIS_CONFIGS", f'"{configs}"'),
                ("CV_BUILD_CFLAGS", '"' + " ".join(cflags) + '"'),
            ],
            # BLIS's header as a system header: its warnings are not ours.
            extra_postargs=cflags + ["-isystem", blis.include_dir],
            depends=CORE_HEADERS,
            debug=self.debug,
        )
        self.compiler.link_shared_object(
            objects,
            path,
            libraries=["blis", "m"],
            library_dirs=[blis.library_dir],
            runtime_library_dirs=[blis.library_dir],
            extra_postargs=["-fopenmp"] + CORE_LINK_ARGS,
            debug=self.debug,
            target_lang="c",
        )

    def build_extensions(self):
        self.build_core()
        for ext in self.extensions:
            ext.library_dirs.insert(0, os.path.dirname(self.core_path()))
        super().build_extensions()

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        self.copy_file(self.core_path(), self.core_inplace_path(), level=self.verbose)

    def get_output_mapping(self):
        mapping = super().get_output_mapping()
        if self.inplace:
            mapping[self.core_path()] = self.core_inplace_path()
        return mapping

    def get_outputs(self):
        outputs = super().get_outputs()
        return outputs if self.inplace else sorted(outputs + [self.core_path()])


def binding(name, sources):
    """An extension module on libconvirt, from the given C files."""
    cflags = compile_flags() + ["-fvisibility=hidden"]
    directories = sorted({os.path.dirname(path) for path in sources})
    headers = [path for d in directories for path in sorted(glob.glob(f"{d}/*.h"))]
    return Extension(
        name,
        sources=sources,
        include_dirs=["csrc"],
        libraries=[CORE_LIBRARY, "m"],
        runtime_library_dirs=[] if sys.platform == "darwin" else [ORIGIN],
        # NumPy's header as a system header: its warnings are not ours.
        extra_compile_args=cflags + ["-isystem", numpy.get_include()],
        extra_link_args=["-fopenmp"] + EXT_LINK_ARGS,
        depends=CORE_HEADERS + headers,
    )


setup(
    ext_modules=[
        binding("convirt._core", sorted(glob.glob("csrc/py/*.c"))),
        # With csrc/py's argument checks and exception mapping (it raises _core's types).
        binding(
            "convirt._testing",
            sorted(glob.glob("csrc/testing/*.c"))
            + ["csrc/py/arrays.c", "csrc/py/errors.c"],
        ),
    ],
    cmdclass={"build_ext": BuildCoreAndExtensions},
)
