"""Build hooks of the moeq Python package (metadata is in pyproject.toml).

At build time libmoeq_c.so and the built plugins are copied into the package when a moeq build
directory holds them: MOEQ_BUILD_DIR, default ../build relative to this file. They land in
moeq/_lib/libmoeq_c.so and moeq/_lib/moeq/plugins/*.so, which is where libmoeq_c.so looks for
plugins (<its directory>/moeq/plugins). Without a build directory the package holds Python only
and finds the library through MOEQ_LIBRARY or the system loader.
"""

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.bdist_wheel import bdist_wheel

HERE = Path(__file__).resolve().parent


def build_dir():
    return Path(os.environ.get("MOEQ_BUILD_DIR", HERE.parent / "build")).resolve()


class BuildPy(build_py):
    """build_py that also copies the native library and the plugins into moeq/_lib."""

    def run(self):
        super().run()
        build = build_dir()
        libs = sorted((build / "lib").glob("libmoeq*.so"))
        lib_dir = Path(self.build_lib) / "moeq" / "_lib"
        if not libs:
            if "MOEQ_BUILD_DIR" in os.environ:
                raise SystemExit(f"MOEQ_BUILD_DIR={build}: no lib/libmoeq*.so there (build the moeq_c target)")
            print(f"moeq: no {build}/lib/libmoeq*.so: the package will use MOEQ_LIBRARY or the system's libmoeq_c.so")
            return
        plugins = sorted((build / "plugins").glob("*.so"))
        if not plugins:
            raise SystemExit(f"{build}/plugins holds no plugin: build the moeq_plugins target")
        (lib_dir / "moeq" / "plugins").mkdir(parents=True, exist_ok=True)
        for f in libs:
            shutil.copy2(f, lib_dir / f.name)
        for f in plugins:
            dst = lib_dir / "moeq" / "plugins" / f.name
            shutil.copy2(f, dst)
            # Trusted loading refuses files others may write: pip keeps the mode it finds.
            dst.chmod(0o755)
        print(f"moeq: shipping {[f.name for f in libs]} and {len(plugins)} plugins from {build}")


class BdistWheel(bdist_wheel):
    """The wheel holds native code loaded through ctypes: any Python 3, this platform only."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(cmdclass={"build_py": BuildPy, "bdist_wheel": BdistWheel})
