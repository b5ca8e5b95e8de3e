"""The CPU proof of consistency distillation on the tiny config (tests/helpers/distill_proof.py does the
work, see its docstring): a tiny UNet teacher trained on the demo clip until its samples are the
clip's faces rather than noise, a student distilled from it, and the student's lcm output against
the teacher's own DDIM output at 1, 2, 4 and 8 steps, both measured against the teacher's 20-step
CFG output from the same held-out noise seeds (latent MSE), and against the clip itself. Also
reported: the sync score of teacher and student sequences with a latent SyncNet trained on the clip.

What this tiny setting can and cannot show (bench/RESULTS.md "Consistency distillation" holds a
run's tables): the tiny teacher's own DDIM has converged by 4 steps (its 4-step output is ~0.01
from its 20-step one), and multistep lcm draws fresh noise between steps, so its output is
another sample of the same faces, as far from the same-seed teacher output as two teacher seeds
are from each other. The assertions are the claims that hold here: one consistency step lands
nearer the teacher's 20-step output than one DDIM step, and 2-4 student calls reach faces as close
to the clip as the teacher's 40 calls (20 steps x CFG).

Run with ``-s`` to see the tables; ``LIPSYNC_DISTILL_PROOF_DIR=DIR`` keeps the dataset, the
trained networks and ``proof.json`` in DIR (a rerun reuses them)."""

import os

import pytest

from tests.helpers.distill_proof import STEPS, run_proof

pytestmark = pytest.mark.heavy  # trains a teacher, a student and a SyncNet: ~16 min on 2 idle cores


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
    lines.append("student lcm vs the clip's latents: " + ", ".join(
        f"{k} steps {mse[f'student_lcm{k}_vs_clip']:.5f}" for k in STEPS))
    lines.append(f"seconds: {proof['seconds']}")
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
    # and explaining more than half of the latents' own spread
    assert mse["teacher20_vs_clip"] < 0.25 * mse["noise_vs_clip"], mse
    assert mse["teacher20_vs_clip"] < 0.5 * mse["clip_variance"], mse


def test_one_consistency_step_is_nearer_the_teachers_20_steps_than_one_ddim_step(proof):
    mse = proof["mse"]
    assert mse["student_lcm1_vs_teacher20"] < 0.8 * mse["teacher_ddim1_cfg_vs_teacher20"], mse


def test_student_4_steps_reach_the_teachers_40_call_faces(proof):
    mse = proof["mse"]
    # 4 UNet calls against 20 steps x 2 (CFG): as close to the clip, within a quarter
    assert mse["student_lcm4_vs_clip"] < 1.25 * mse["teacher20_vs_clip"], mse
    assert mse["student_lcm2_vs_clip"] < 2.0 * mse["teacher20_vs_clip"], mse


def test_latent_syncnet_learned_the_clip_before_scoring(proof):
    # the sync scores above are only worth reading if the SyncNet tells pairs apart (chance: 0.5)
    assert proof["syncnet_accuracy"] > 0.7, proof["syncnet_accuracy"]
    assert abs(proof["sync"]["clip latents"]["best_offset"]) <= 1, proof["sync"]
