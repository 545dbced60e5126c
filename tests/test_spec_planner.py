"""Specs, profiles, overrides and the content-addressed plan."""

from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.planner import plan
from harness.spec import (
    apply_profile,
    list_tables,
    load_profile,
    load_table,
    parse_overrides,
    resolve,
    spec_hash,
)


def test_table2_plan_has_the_papers_layout():
    p = plan(load_table("table2"), load_profile("tiny"))
    kinds = [job.kind for job in p.jobs.values()]
    assert kinds.count("pretrain") == 4 and kinds.count("transfer") == 28
    assert list(p.table.rows) == ["IN-118K", "COCO", "OI-118K", "IN-118K-LT"]
    assert p.table.columns == ["CIFAR10", "Cars", "Food", "Pets", "Places", "SUN", "VOC"]
    # topological order: every dependency comes before its dependants
    order = list(p.jobs)
    assert all(order.index(d) < order.index(k) for k, job in p.jobs.items() for d in job.deps)


def test_profile_scales_sizes_and_keeps_the_spec():
    tiny = plan(load_table("table2"), load_profile("tiny"))
    paper = plan(load_table("table2"), load_profile("paper"))
    t = tiny.jobs[tiny.rows["COCO"]].spec
    q = paper.jobs[paper.rows["COCO"]].spec
    assert q["epochs"] == 400 and t["epochs"] == 10  # 400 x 0.025
    assert q["moco"]["arch"] == "resnet50" and t["moco"]["arch"] == "resnet18"
    assert q["data"]["source"] == "real" and t["data"]["source"] == "biasworld"
    assert t["moco"]["tau"] == q["moco"]["tau"] == 0.2  # the method's published value, untouched


def test_profile_targets_size_one_target_of_a_task(tmp_path):
    """A task's `targets` applies after the task's sizes and only to that target dataset (voc12_seg
    is also the retrieval task's target: untouched there); a name not among the task's targets fails."""
    p = plan(load_table("table3"), load_profile("tiny"))
    spec = {p.table.column_specs[c]["data"]["name"]: p.jobs[k].spec
            for (r, c), k in p.cells.items() if r == "IN-118K"}  # fmt: skip
    voc, city = spec["voc12_seg"], spec["cityscapes"]
    assert (voc["data"]["n_train"], voc["protocol"]["epochs"]) == (800, 8)
    assert (city["data"]["n_train"], city["protocol"]["epochs"]) == (160, 4)  # the task's sizes
    assert voc["protocol"]["crop_size"] == city["protocol"]["crop_size"] == 48  # tasks.segmentation
    assert spec["voc_det"]["protocol"]["iterations"] == 400
    t6 = plan(load_table("table6"), load_profile("tiny"))
    retrieval = [j.spec for j in t6.jobs.values() if j.spec.get("task") == "retrieval"]
    assert retrieval and all(r["data"]["n_train"] == 400 for r in retrieval)  # tasks.retrieval's own
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\ndata_source: biasworld\npretrain: {}\ntransfer: {}\n"
                   "tasks: {segmentation: {targets: {voc12seg: {data.n_train: 10}}}}\n")  # fmt: skip
    with pytest.raises(HarnessError, match="voc12_seg"):
        load_profile(str(bad))


def test_scale_keeps_200_and_800_epoch_specs_apart():
    spec = {"epochs": 800, "data": {"size": 118_000}}
    assert apply_profile(spec, {"epochs": {"scale": 0.025}}, "p")["epochs"] == 20
    spec["epochs"] = 200
    assert apply_profile(spec, {"epochs": {"scale": 0.025}}, "p")["epochs"] == 5


def test_override_changes_only_the_jobs_it_touches():
    base = plan(load_table("table2"), load_profile("tiny"))
    over = plan(load_table("table2"), load_profile("tiny"), parse_overrides(["pretrain.epochs=5"]))
    assert over.jobs[over.rows["COCO"]].spec["epochs"] == 5
    assert set(base.rows.values()).isdisjoint(over.rows.values())  # new pretraining keys
    assert set(base.cells.values()).isdisjoint(over.cells.values())  # and so new transfer keys
    linear = plan(load_table("table2"), load_profile("tiny"), parse_overrides(["transfer.protocol.n_wd=9"]))
    assert set(linear.rows.values()) == set(base.rows.values())  # pretraining is shared
    assert set(linear.cells.values()).isdisjoint(base.cells.values())


def test_table1_and_table2_share_nothing_but_names():
    t1 = plan(load_table("table1"), load_profile("tiny"))
    assert [job.kind for job in t1.jobs.values()] == ["datastats"] * 5


def test_keys_are_stable_and_ignore_execution_fields():
    a = {"epochs": 1, "device": "cpu", "num_workers": 0}
    b = {"epochs": 1, "device": "cuda", "num_workers": 8}
    assert spec_hash(a) == spec_hash(b)
    assert spec_hash(a) != spec_hash({**a, "epochs": 2})
    # a layout (pretrain.memory_format) is how a job runs: a table planned with it keeps every job key
    base = plan(load_table("table2"), load_profile("tiny"))
    nhwc = plan(load_table("table2"), load_profile("tiny"), parse_overrides(["pretrain.memory_format=channels_last"]))
    assert list(base.jobs) == list(nhwc.jobs)
    assert any(job.spec.get("memory_format") == "channels_last" for job in nhwc.jobs.values())


def test_typo_in_override_names_the_closest_key():
    with pytest.raises(HarnessError, match="pretrain.epochs"):
        plan(load_table("table2"), load_profile("tiny"), parse_overrides(["pretrain.epoch=5"]))
    with pytest.raises(HarnessError, match="moco.tau"):
        plan(load_table("table2"), load_profile("tiny"), parse_overrides(["pretrain.moco.taux=0.1"]))
    with pytest.raises(HarnessError, match="pretrain"):
        parse_overrides(["pretrain.epochs"])
    with pytest.raises(HarnessError, match="did you mean 'pretrain.epochs'"):
        plan(load_table("table2"), load_profile("tiny"), parse_overrides(["pretrian.epochs=5"]))


def test_unknown_names_list_valid_ones():
    with pytest.raises(HarnessError, match="Did you mean 'table2'"):
        load_table("tabel2")
    with pytest.raises(HarnessError, match="Did you mean 'tiny'"):
        load_profile("tinny")
    with pytest.raises(HarnessError, match="unknown key 'epoch'"):
        resolve({"epochs": 1}, {"epoch": 2})


@pytest.mark.parametrize("profile", ["smoke", "tiny", "paper"])
def test_every_table_spec_loads_and_plans(profile):
    for name in list_tables():
        p = plan(load_table(name), load_profile(profile))
        assert p.jobs, (name, profile)
