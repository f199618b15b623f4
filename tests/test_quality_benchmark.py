"""The quality benchmark's own arithmetic: the lookup-table floor, Spearman, merging, the table."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
quality = pytest.importorskip("quality")


def test_lookup_table_floor_is_zero_when_ct_is_a_function_of_mri():
    mri = np.linspace(-1, 1, 256).reshape(16, 16)
    ct = 1000.0 * mri ** 2 - 500.0  # one HU per MRI bin, not monotonic
    mask = np.ones_like(mri)
    assert quality.lookup_table_floor([mri], [ct], [mask]) == pytest.approx(0.0, abs=1e-6)


def test_lookup_table_floor_cannot_tell_bone_from_air():
    # the same dark MRI value is air (-1000 HU) in half the voxels and bone (+1000) in the rest
    mri = np.full((4, 4), -0.9)
    ct = np.where(np.arange(16).reshape(4, 4) % 2 == 0, -1000.0, 1000.0)
    mask = np.ones_like(mri)
    assert quality.lookup_table_floor([mri], [ct], [mask]) == pytest.approx(1000.0)
    # voxels outside the mask do not count
    mask[:, :] = 0
    mask[0, 0] = 1
    assert quality.lookup_table_floor([mri], [ct], [mask]) == pytest.approx(0.0)


def test_rank_correlation_is_spearman():
    a = np.array([0.1, 0.5, 0.2, 0.9, 0.4])
    assert quality.rank_correlation(a, a ** 3) == pytest.approx(1.0)
    assert quality.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert quality.rank_correlation(a, np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == pytest.approx(0.5)


def _result(variants: dict, steps: int = 2000, train_subjects: int = 24) -> dict:
    return {"steps": steps, "batch_size": 4, "image_size": 64, "seed": 0, "overrides": {},
            "backend": "tensorflow", "train_subjects": train_subjects,
            "lookup_table_floor_mae_hu": 207.3, "variants": variants}


def _variant(mae: float) -> dict:
    return {"mri2ct": {"mae_hu": mae, "psnr_db": 23.75, "ssim": 0.839}, "ct2mri_mae_units": 0.315,
            "uncertainty_spearman": 0.677, "train_minutes": 31.2}


def test_results_of_parallel_invocations_merge_and_render(tmp_path, monkeypatch):
    monkeypatch.setattr(quality.common, "RESULTS", str(tmp_path))
    path = tmp_path / "quality-x-seed0.json"
    written_before_subjects_were_recorded = _result({"no_kl": _variant(180.0)})
    del written_before_subjects_were_recorded["train_subjects"]
    path.write_text(json.dumps(written_before_subjects_were_recorded))
    merged = quality.merge_result("quality-x-seed0", _result({"full": _variant(162.4)}))
    assert set(merged["variants"]) == {"full", "no_kl"}
    # another budget or training set is not mixed into the same table
    other = quality.merge_result("quality-x-seed0", _result({"full": _variant(150.0)}, steps=10))
    assert set(other["variants"]) == {"full"}
    more_data = quality.merge_result("quality-x-seed0",
                                     _result({"full": _variant(150.0)}, train_subjects=96))
    assert set(more_data["variants"]) == {"full"}

    path.write_text(json.dumps(merged))
    table = quality.markdown_table([str(path)]).splitlines()
    assert len(table) == 4
    assert table[2] == "| full | 0 | 2000 | 162 | 23.8 | 0.84 | 0.32 | 0.68 | 207 | 31.2 |"
    assert table[3].startswith("| no_kl | 0 | 2000 | 180 |")

    tuned = tmp_path / "quality-tuned-seed0.json"
    tuned.write_text(json.dumps({**_result({"full": _variant(170.0)}),
                                 "overrides": {"disc_heads": 5, "zoom": 0.2}}))
    assert quality.markdown_table([str(tuned)]).splitlines()[2].startswith(
        "| full + disc_heads=5, zoom=0.2 | 0 | 2000 | 170 |")
    larger = tmp_path / "quality-larger-seed0.json"
    larger.write_text(json.dumps(more_data))
    assert quality.markdown_table([str(larger)]).splitlines()[2].startswith(
        "| full + 96 training subjects | 0 | 2000 | 150 |")


def test_figure_rows_show_three_levels_of_the_head():
    assert [quality.figure_slice(row, 8) for row in range(3)] == [1, 4, 6]
    assert [quality.figure_slice(row, 1) for row in range(3)] == [0, 0, 0]


def test_erosion_keeps_only_pixels_far_from_the_edge():
    mask = np.zeros((1, 9, 9), bool)
    mask[0, 1:8, 1:8] = True
    eroded = quality.erode(mask, 2)
    assert eroded.sum() == 9 and eroded[0, 3:6, 3:6].all()
    assert not quality.erode(np.ones((1, 4, 4), bool), 1)[0, 0].any()  # the border is an edge


def test_tissue_errors_split_the_mae_by_ct_class():
    ct = np.full((1, 12, 12), 40.0)
    ct[0, :, :2] = -1000.0  # air
    ct[0, :, 10:] = 1000.0  # bone
    sct = ct + 50.0
    sct[0, :, 10:] = 700.0  # bone 300 HU too dark
    mask = np.ones_like(ct, bool)
    report = quality.tissue_errors([sct], [ct], [mask])
    assert report["bone"]["signed_hu"] == pytest.approx(-300.0)
    assert report["soft"]["mae_hu"] == pytest.approx(50.0)
    # soft tissue is columns 2-9; 3 px from air, bone and the image border: rows 3-8, columns 5-6
    assert report["air"]["voxels"] == 24 and report["soft_interior"]["voxels"] == 6 * 2
    assert report["soft_interior"]["signed_hu"] == pytest.approx(50.0)
    total = 24 * 50 + 96 * 50 + 24 * 300
    assert report["bone"]["share"] == pytest.approx(24 * 300 / total)
    assert sum(report[k]["share"] for k in ("air", "soft", "bone")) == pytest.approx(1.0)


def test_set_values_are_json_or_plain_strings():
    from keras_vaegan.cli import parse_set

    assert parse_set(["gen_res_blocks=6", "augment=false", "beta_kl=1e-4",
                      "mixed_precision=off", 'upsampling="nearest"']) == {
        "gen_res_blocks": 6, "augment": False, "beta_kl": 1e-4, "mixed_precision": "off",
        "upsampling": "nearest"}


@pytest.mark.parametrize("argv", [["--set", "no_such_key=1"], ["--set", "gen_res_blocks=-1"],
                                  ["--set", "gen_res_blocks"],
                                  ["--variants", "full,no_such_variant"]])
def test_bad_arguments_exit_2_before_writing_anything(tmp_path, monkeypatch, capsys, argv):
    keep = tmp_path / "work"
    monkeypatch.setattr(sys, "argv", ["quality.py", "--keep", str(keep), *argv])
    with pytest.raises(SystemExit) as exit_info:
        quality.main()
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not keep.exists()


def test_a_kept_folder_in_use_by_another_run_is_refused(tmp_path, monkeypatch, capsys):
    import fcntl

    keep = tmp_path / "work"
    keep.mkdir()
    with open(keep / ".quality.lock", "a") as other:  # as another quality.py process holds it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        monkeypatch.setattr(sys, "argv", ["quality.py", "--keep", str(keep), "--steps", "2"])
        with pytest.raises(SystemExit) as exit_info:
            quality.main()
    assert exit_info.value.code == 2
    assert "is in use by another quality.py run" in capsys.readouterr().err
    assert sorted(p.name for p in keep.iterdir()) == [".quality.lock"]  # no split written
    assert quality.hold_folder(str(keep))  # free once the other run is gone
    assert quality.hold_folder(str(keep))  # and this process may take it again


def test_machine_names_the_cpu_model(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\nflags\t\t: fpu avx2\n")
    assert quality.common.cpu_model(str(cpuinfo)) == "Example CPU @ 2.0GHz"
    assert quality.common.cpu_model(str(tmp_path / "missing")) != ""


def test_trained_precision_is_read_from_the_run(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"precision_policy": "mixed_bfloat16"}))
    assert quality.trained_precision(str(tmp_path)) == "mixed_bfloat16"


def test_anatomy_floor_lies_below_the_lookup_table_floor(tmp_path):
    """Knowing the anatomy beats any per-intensity map on the benchmark's own test split."""
    from keras_vaegan.config import Config

    paths = quality.write_split(str(tmp_path), size=32, train_subjects=1, test_subjects=2,
                                slices=4, seed=5)
    anatomy = quality.anatomy_floor(5, subjects=2, slices=4, size=32)
    lookup = quality.floor_for(paths["test"], Config())
    assert 5.0 < anatomy < 0.5 * lookup


def test_a_soft_copy_of_the_anatomy_loses_more_the_softer_it_is():
    sharp = quality.anatomy_floor(5, subjects=1, slices=3, size=32)
    half = quality.anatomy_floor(5, subjects=1, slices=3, size=32, blur_px=0.5)
    one = quality.anatomy_floor(5, subjects=1, slices=3, size=32, blur_px=1.0)
    assert sharp < half < one
    assert one > 2 * sharp  # a one-pixel blur of the thin skull costs more than the floor


def test_paired_reference_learns_the_pairs_and_is_scored_as_a_run(tmp_path):
    """The supervised reference trains both generators on pairs and saves a loadable run."""
    import conftest

    from keras_vaegan.config import Config
    from keras_vaegan.inference.runs import load_run

    config = Config(**{**conftest.TINY, "epochs": 4, "steps_per_epoch": 15, "batch_size": 4,
                       "learning_rate_g": 2e-3})
    mri, ct = quality.paired_training_slices(0, subjects=2, slices=4, size=32, config=config)
    assert mri.shape == ct.shape == (8, 32, 32)
    assert -1.0 <= ct.min() and ct.max() <= 1.0 and -1.0 <= mri.min() and mri.max() <= 1.0

    def error(run_dir):
        run = load_run(run_dir)
        sct = np.asarray(run.model.translate(mri[..., None], "mri2ct"))[..., 0]
        smri = np.asarray(run.model.translate(ct[..., None], "ct2mri"))[..., 0]
        return np.abs(sct - ct).mean(), np.abs(smri - mri).mean()

    untrained = error(conftest.save_tiny_run(tmp_path / "untrained", config))
    quality.train_paired(config, mri, ct, str(tmp_path / "paired"))
    trained = error(tmp_path / "paired")
    assert trained[0] < 0.6 * untrained[0]  # MRI -> CT
    assert trained[1] < 0.6 * untrained[1]  # and CT -> MRI, both supervised


# --- the head phantom, the error by class, the through-plane measure and the floors ----------


def test_class_errors_use_the_issues_bone_soft_tissue_and_air_classes():
    ct = np.full((2, 6, 6), 40.0)
    ct[:, :, 0] = -1000.0  # air
    ct[:, :, 1] = -250.0  # air by the issue's classes (< -200 HU)
    ct[:, :, 5] = 1000.0  # bone (> 300 HU)
    prediction = ct.copy()
    prediction[:, :, :2] += 100.0
    prediction[:, :, 2:5] -= 30.0
    prediction[:, :, 5] = 400.0
    mask = np.ones_like(ct, bool)
    mask[1] = False  # the second slice is outside the body
    report = quality.class_errors([prediction], [ct], [mask])
    assert report == pytest.approx({"bone": 600.0, "soft_tissue": 30.0, "air": 100.0})
    assert quality.class_errors([prediction], [ct], [mask & (ct < 300)])["bone"] is None


def test_floor_predictions_are_scored_like_a_model():
    rng = np.random.default_rng(0)
    ct = np.where(rng.random((4, 8, 8)) < 0.3, 1000.0, 40.0) + np.arange(4)[:, None, None] * 10
    mri = np.where(ct > 500, -0.9, 0.3)
    mask = np.ones_like(ct)
    perfect = quality.prediction_report([ct], [ct], [mask])
    assert perfect["mae_hu"] == 0 and perfect["through_plane_mae_hu"] == 0
    constant = quality.constant_predictions([ct], [mask])[0]
    assert np.all(constant == np.median(ct))
    report = quality.prediction_report([constant], [ct], [mask])
    # a constant prediction has no steps between slices: its through-plane error is the CT's own
    assert report["through_plane_mae_hu"] == pytest.approx(np.abs(np.diff(ct, axis=0)).mean())
    table = quality.lookup_table_predictions([mri], [ct], [mask])[0]
    lookup = quality.prediction_report([table], [ct], [mask])
    assert lookup["mae_hu"] == pytest.approx(quality.lookup_table_floor([mri], [ct], [mask]))
    assert lookup["mae_hu"] < report["mae_hu"]


def test_head_phantom_split_and_floors(tmp_path):
    from keras_vaegan.config import Config
    from keras_vaegan.data import phantom_head
    from keras_vaegan.data.phantom import subject_seed

    paths = quality.write_split(str(tmp_path), size=32, train_subjects=1, test_subjects=2,
                                slices=4, seed=5, kind="head")
    nib = pytest.importorskip("nibabel")
    ct = nib.load(os.path.join(paths["test"], "001", "ct.nii.gz"))
    subject = phantom_head.make_subject(subject_seed(5 + quality.TEST_SEED_OFFSET, 1), 32, 4)
    np.testing.assert_allclose(np.transpose(ct.get_fdata(), (2, 1, 0)), subject.ct, atol=1e-3)
    floors = quality.floors(paths["test"], Config(), 5, 2, 4, 32, kind="head")
    assert set(floors) == {"constant", "lookup_table", "anatomy"}
    anatomy, lookup, constant = (floors[k]["mae_hu"] for k in ("anatomy", "lookup_table",
                                                                "constant"))
    assert anatomy < lookup < constant
    assert anatomy == pytest.approx(quality.anatomy_floor(5, 2, 4, 32, kind="head"), rel=1e-5)
    assert anatomy != pytest.approx(quality.anatomy_floor(5, 2, 4, 32), rel=1e-3)  # not classic
    for report in floors.values():
        assert set(report["by_class_mae_hu"]) == {"bone", "soft_tissue", "air"}
        assert report["through_plane_mae_hu"] > 0
    # bone is where a per-intensity map fails: it cannot tell bone from air
    assert floors["lookup_table"]["by_class_mae_hu"]["bone"] > lookup


def test_head_phantom_benchmark_runs_end_to_end_and_scores_ssim_in_2d(tmp_path, monkeypatch):
    from keras_vaegan.inference import evaluate as evaluate_module

    monkeypatch.setattr(quality.common, "RESULTS", str(tmp_path))
    modes = []
    real_evaluate = evaluate_module.evaluate

    def spy(*args, **kwargs):
        modes.append(kwargs.get("ssim_mode"))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    tiny = ["--set", "gen_filters=4", "--set", "latent_channels=4", "--set", "gen_res_blocks=1",
            "--set", "disc_filters=[8,8,8]", "--set", "disc_heads=2", "--set", "pool_size=2",
            "--set", "mixed_precision=\"off\""]
    monkeypatch.setattr(sys, "argv", [
        "quality.py", "--phantom", "head", "--steps", "4", "--steps-per-epoch", "2",
        "--image-size", "32", "--batch-size", "2", "--train-subjects", "1",
        "--test-subjects", "1", "--slices", "3", "--variants", "full", *tiny,
        "--set", "checkpoint_every=1", "--keep", str(tmp_path / "kept")])
    quality.main()
    result = json.loads((tmp_path / "quality-head64-seed0.json").read_text())
    # the run, then each epoch of its trajectory; each mirror-averaged, then in one pass
    assert modes == ["2d"] * 6
    assert result["phantom"] == "head" and result["steps"] == 4
    assert result["constant_floor_mae_hu"] > result["lookup_table_floor_mae_hu"] \
        > result["anatomy_floor_mae_hu"]
    full = result["variants"]["full"]
    assert set(full["mri2ct_mae_hu_by_class"]) == {"bone", "soft_tissue", "air"}
    assert full["mri2ct"]["through_plane_mae_hu"] > 0
    trajectory = full["trajectory"]
    assert [(point["epoch"], point["steps"]) for point in trajectory] == [(1, 2), (2, 4)]
    assert trajectory[-1]["mri2ct"] == full["mri2ct"]  # the last checkpoint is the saved model
    assert trajectory[0]["mri2ct"]["mae_hu"] != full["mri2ct"]["mae_hu"]
    assert (tmp_path / "quality-head64-full-seed0.png").exists()
    assert quality.markdown_table([str(tmp_path / "quality-head64-seed0.json")]).splitlines()[
        2].startswith("| full + ")
    assert "head phantom" in quality.markdown_table(
        [str(tmp_path / "quality-head64-seed0.json")]).splitlines()[2]
    single = full["mri2ct_single_pass"]
    assert single["mae_hu"] != full["mri2ct"]["mae_hu"]  # an untrained generator is not symmetric
    assert full["mri2ct_averaging"] == {"mirror_average": True, "shift_average": True}

    # --rescore: the kept run scored again, nothing trained, its training minutes kept
    monkeypatch.setattr(sys, "argv", sys.argv + ["--rescore"])
    import keras_vaegan.training.fit as training

    monkeypatch.setattr(training, "fit", lambda *args, **kwargs: pytest.fail("it trained"))
    quality.main()
    again = json.loads((tmp_path / "quality-head64-seed0.json").read_text())["variants"]["full"]
    assert again["train_minutes"] == full["train_minutes"] and "pieces" not in again
    assert again["mri2ct"] == full["mri2ct"] and again["mri2ct_single_pass"] == single
    assert [point["epoch"] for point in again["trajectory"]] == [1, 2]
    assert again["trajectory"][-1]["mri2ct_single_pass"] == single


def test_a_run_in_pieces_adds_up_its_training_minutes(tmp_path, monkeypatch):
    assert quality.clock_so_far(str(tmp_path)) == {"minutes": 0.0, "pieces": 0}
    now = iter([100.0, 160.0, 220.0])  # train begins, then two epoch ends a minute apart
    monkeypatch.setattr(quality.time, "perf_counter", lambda: next(now))
    clock = quality.training_clock(str(tmp_path), {"minutes": 5.0, "pieces": 1})
    clock.on_train_begin()
    clock.on_epoch_end(0)
    assert quality.clock_so_far(str(tmp_path)) == {"minutes": 6.0, "pieces": 2}
    clock.on_epoch_end(1)
    assert quality.clock_so_far(str(tmp_path)) == {"minutes": 7.0, "pieces": 2}


@pytest.mark.parametrize("flag", ["--resume", "--rescore"])
@pytest.mark.parametrize("extra", [[], ["--keep", "k", "--variants", "paired"]])
def test_resume_and_rescore_need_a_kept_folder_and_a_fit_variant(flag, extra, monkeypatch,
                                                                 capsys):
    monkeypatch.setattr(sys, "argv", ["quality.py", flag, *extra])
    with pytest.raises(SystemExit) as stop:
        quality.main()
    assert stop.value.code == 2
    assert flag in capsys.readouterr().err


def test_an_interrupted_run_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    import keras_vaegan.training.fit as training

    def interrupted(config, output, **kwargs):
        raise training.TrainingInterrupted(output, {"iterations": 7})

    monkeypatch.setattr(training, "fit", interrupted)
    keep = tmp_path / "kept"
    monkeypatch.setattr(sys, "argv", [
        "quality.py", "--keep", str(keep), "--image-size", "32", "--train-subjects", "1",
        "--test-subjects", "1", "--slices", "2", "--steps", "2", "--steps-per-epoch", "1"])
    with pytest.raises(SystemExit) as stop:
        quality.main()
    assert stop.value.code == 130
    assert "to go on: the same command with --resume" in capsys.readouterr().err
    assert (keep / "data" / "test").is_dir()  # the kept split a --resume would train on
