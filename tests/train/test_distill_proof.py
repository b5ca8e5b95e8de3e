"""The CPU proof of consistency distillation on the tiny config (tests/helpers/distill_proof.py does the
work, see its docstring): a tiny UNet teacher trained on the demo clip until its samples are the
clip's faces rather than noise, a student distilled from it, and the student's few-step lcm
output against the teacher's own few-step DDIM output, both measured against the teacher's
20-step CFG output on held-out noise seeds (latent MSE). Also reported: 1 and 8 steps, and the
sync score of teacher and student sequences with a latent SyncNet trained on the clip.

Run with ``-s`` to see the tables (bench/RESULTS.md "Consistency distillation" holds a run's);
``LIPSYNC_DISTILL_PROOF_DIR=DIR`` keeps the dataset, checkpoints and ``proof.json`` in DIR (a rerun
reuses them)."""

import os

import pytest

from tests.helpers.distill_proof import STEPS, run_proof

pytestmark = pytest.mark.heavy  # trains a teacher and a student, 9 sampling programs: see bench/RESULTS.md


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
    folder = os.environ.get("LIPSYNC_DISTILL_PROOF_DIR") or str(tmp_path_factory.mktemp("distill_proof"))
    return run_proof(folder)


def report(proof) -> str:
    mse = proof["mse"]
    lines = ["| steps | teacher DDIM + CFG 1.5: MSE to teacher 20 + CFG | student lcm: MSE to teacher 20 + CFG | "
             "ratio |", "|---|---|---|---|"]
    for k in STEPS:
        teacher, student = mse[f"teacher_ddim{k}_cfg_vs_teacher20"], mse[f"student_lcm{k}_vs_teacher20"]
        lines.append(f"| {k} | {teacher:.5f} | {student:.5f} | {teacher / student:.2f}x |")
    lines.append(f"\nteacher 20 + CFG vs the clip's latents: {mse['teacher20_vs_clip']:.5f}; starting noise vs the "
                 f"clip: {mse['noise_vs_clip']:.5f}; the clip's latent variance: {mse['clip_variance']:.5f}")
    lines.append(f"\nlatent SyncNet pair accuracy (last 50 steps): {proof['syncnet_accuracy']:.2f}")
    lines.append("| sequence | similarity at offset 0 | best offset | confidence |")
    lines.append("|---|---|---|---|")
    for name, score in proof["sync"].items():
        lines.append(f"| {name} | {score['similarity_at_zero']:.3f} | {score['best_offset']} | "
                     f"{score['confidence']:.3f} |")
    return "\n".join(lines)


def test_teacher_samples_are_the_clip_not_noise(proof):
    mse = proof["mse"]
    print("\n" + report(proof))
    # 20 DDIM steps with CFG land on the clip's faces: far closer to its latents than noise is,
    # and well inside the latents' own spread
    assert mse["teacher20_vs_clip"] < 0.1 * mse["noise_vs_clip"], mse
    assert mse["teacher20_vs_clip"] < 0.25 * mse["clip_variance"], mse


def test_student_4_steps_is_twice_as_close_to_the_teacher_as_its_own_4_ddim_steps(proof):
    mse = proof["mse"]
    assert mse["teacher_ddim4_cfg_vs_teacher20"] >= 2 * mse["student_lcm4_vs_teacher20"], mse


def test_student_2_steps_is_closer_than_the_teachers_2_ddim_steps(proof):
    mse = proof["mse"]
    assert mse["student_lcm2_vs_teacher20"] < mse["teacher_ddim2_cfg_vs_teacher20"], mse


def test_latent_syncnet_learned_the_clip_before_scoring(proof):
    # the sync scores above are only worth reading if the SyncNet tells pairs apart (chance: 0.5)
    assert proof["syncnet_accuracy"] > 0.7, proof["syncnet_accuracy"]
    assert proof["sync"]["clip latents"]["best_offset"] == 0, proof["sync"]
