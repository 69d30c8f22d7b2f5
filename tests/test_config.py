"""The job config: YAML is loaded safely, and every bad key, type or value is rejected with an error
naming the dotted key path (no Spark needed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from clusterlake.config import JobConfig, load_config, parse_override
from clusterlake.errors import ClusterlakeError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
LOCAL_YAML = ROOT / "conf" / "local.yaml"


def base() -> dict:
    return {"input": {"path": "in.parquet", "id_column": "id"}, "output": {"path": "out"}}


def error_of(**kwargs) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(**kwargs)
    msg = str(ei.value)
    assert "\n" not in msg, f"config errors must be one line: {msg!r}"
    return msg


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --------------------------------------------------------------------------------------------
# the shipped config


def test_local_yaml_loads():
    cfg = load_config(path=LOCAL_YAML)
    assert isinstance(cfg, JobConfig)
    assert cfg.job.name == "customer-segments"
    assert cfg.job.run_date is None  # null = today
    assert cfg.input.id_column == "customer_id"
    assert cfg.input.feature_columns is None
    assert cfg.input.label_column == "true_segment"
    assert cfg.input.invalid_rows == "fail"
    assert cfg.kmeans.k == 7 and cfg.kmeans.max_iter == 50 and cfg.kmeans.tol == pytest.approx(1e-4)
    assert cfg.preprocess.pca.variance == pytest.approx(0.95)
    assert cfg.output.format == "delta"
    # keys with dots inside a free-form mapping are kept whole
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == 8
    assert cfg.spark.conf["spark.driver.memory"] == "4g"
    assert cfg.resolved_run_date == dt.datetime.now(dt.timezone.utc).date()


def test_local_yaml_with_overrides():
    cfg = load_config(path=LOCAL_YAML, overrides=["kmeans.k=12", "job.run_date=2026-11-01"])
    assert cfg.kmeans.k == 12
    assert cfg.job.run_date == dt.date(2026, 11, 1)
    assert cfg.resolved_run_date == dt.date(2026, 11, 1)
    assert cfg.input.id_column == "customer_id"  # the rest of the file is untouched


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, ClusterlakeError)
    assert ConfigError.exit_code == 2


# --------------------------------------------------------------------------------------------
# unknown keys


def test_unknown_top_level_key_from_data():
    msg = error_of(data={**base(), "kmean": {"k": 3}})
    assert "unknown key 'kmean'" in msg


def test_unknown_nested_key_from_data():
    data = base()
    data["kmeans"] = {"kk": 3}
    msg = error_of(data=data)
    assert "unknown key 'kmeans.kk'" in msg


def test_unknown_deeply_nested_key_from_yaml(tmp_path):
    p = write(tmp_path, "input: {path: x, id_column: id}\noutput: {path: o}\n"
                        "preprocess:\n  pca:\n    varianse: 0.9\n")
    msg = error_of(path=p)
    assert "unknown key 'preprocess.pca.varianse'" in msg
    assert str(p) in msg


def test_unknown_keys_from_yaml_are_all_named(tmp_path):
    p = write(tmp_path, "input: {path: x, id_column: id, id_colum: id}\noutput: {path: o}\nkmeans: {kk: 3}\n")
    msg = error_of(path=p)
    assert "'kmeans.kk'" in msg and "'input.id_colum'" in msg
    assert str(p) in msg


@pytest.mark.parametrize("override, dotted", [
    ("kmeans.kk=3", "kmeans.kk"),
    ("kmean.k=3", "kmean"),
    ("nosuch=1", "nosuch"),
    ("preprocess.pca.varianse=0.5", "preprocess.pca.varianse"),
])
def test_unknown_key_from_set(override, dotted):
    msg = error_of(data=base(), overrides=[override])
    assert f"unknown key '{dotted}'" in msg
    assert "--set" in msg


def test_set_into_a_scalar_is_refused():
    msg = error_of(data=base(), overrides=["input.path.x=1"])
    assert "'input.path'" in msg


def test_set_without_equals_or_key():
    assert "key=value" in error_of(data=base(), overrides=["kmeans.k"])
    assert "empty key" in error_of(data=base(), overrides=["kmeans..k=3"])
    assert "empty key" in error_of(data=base(), overrides=["=3"])


# --------------------------------------------------------------------------------------------
# wrong types, bad values


@pytest.mark.parametrize("override, dotted, got", [
    ("kmeans.max_iter=x", "kmeans.max_iter", '"x"'),
    ("kmeans.k=eight", "kmeans.k", '"eight"'),
    ("kmeans.k=2.5", "kmeans.k", "2.5"),
    ("kmeans.tol=[1]", "kmeans.tol", "[1]"),
    ("input.feature_columns=age", "input.feature_columns", '"age"'),
    ("preprocess.pca.enabled=maybe", "preprocess.pca.enabled", '"maybe"'),
    ("job.run_date=yesterday", "job.run_date", '"yesterday"'),
])
def test_wrong_type_names_key_and_value(override, dotted, got):
    msg = error_of(data=base(), overrides=[override])
    assert f"'{dotted}'" in msg
    assert f"(got {got})" in msg
    assert "invalid config <dict>" in msg


def test_wrong_type_from_yaml_names_key_and_file(tmp_path):
    p = write(tmp_path, 'input: {path: x, id_column: id}\noutput: {path: o}\nkmeans:\n  max_iter: "x"\n')
    msg = error_of(path=p)
    assert "'kmeans.max_iter'" in msg and str(p) in msg


@pytest.mark.parametrize("override, dotted, hint", [
    ("kmeans.k=1", "kmeans.k", ">= 2"),
    ("kmeans.k=0", "kmeans.k", ">= 2"),
    ("kmeans.k=-3", "kmeans.k", ">= 2"),
    ("kmeans.k=true", "kmeans.k", "not a boolean"),
    ("kmeans.max_iter=-1", "kmeans.max_iter", "greater than or equal to 0"),
    ("input.invalid_rows=skip", "input.invalid_rows", "'fail' or 'drop'"),
    ("preprocess.pca.variance=2", "preprocess.pca.variance", "less than or equal to 1"),
    ("preprocess.pca.variance=0", "preprocess.pca.variance", "greater than 0"),
    ("job.name=my job", "job.name", "pattern"),
    ("job.name=''", "job.name", "at least 1"),
    ("output.format=csv", "output.format", "'delta' or 'parquet'"),
    ("input.feature_columns=[]", "input.feature_columns", "at least one column"),
    ("input.feature_columns=[a, b, a]", "input.feature_columns", "more than once"),
    ("quality.sample_size=10", "quality.sample_size", "100"),
])
def test_bad_value_names_key(override, dotted, hint):
    msg = error_of(data=base(), overrides=[override])
    assert f"'{dotted}'" in msg
    assert hint in msg


def test_bad_value_in_yaml_names_key_and_file(tmp_path):
    p = write(tmp_path, "job: {name: nightly run}\ninput: {path: x, id_column: id, invalid_rows: skip}\n"
                        "output: {path: o}\nkmeans: {k: 1}\n")
    msg = error_of(path=p)
    for dotted in ("job.name", "input.invalid_rows", "kmeans.k"):
        assert f"'{dotted}'" in msg
    assert str(p) in msg


def test_feature_columns_must_not_contain_the_id():
    msg = error_of(data=base(), overrides=["input.feature_columns=[id, age]"])
    assert "input" in msg and "feature_columns" in msg and "'id'" in msg


# --------------------------------------------------------------------------------------------
# missing required keys


def test_missing_id_column():
    msg = error_of(data={"input": {"path": "x"}, "output": {"path": "o"}})
    assert "missing required key 'input.id_column'" in msg
    assert "input.path" not in msg


def test_missing_output_section():
    msg = error_of(data={"input": {"path": "x", "id_column": "id"}})
    assert "missing required key 'output'" in msg


def test_missing_output_path(tmp_path):
    p = write(tmp_path, "input: {path: x, id_column: id}\noutput: {format: parquet}\n")
    assert "missing required key 'output.path'" in error_of(path=p)


def test_empty_yaml_names_both_required_sections(tmp_path):
    p = write(tmp_path, "# nothing here\n")
    msg = error_of(path=p)
    assert "missing required key 'input'" in msg and "missing required key 'output'" in msg
    assert str(p) in msg


def test_required_key_can_come_from_set():
    cfg = load_config(data={"input": {"path": "x"}, "output": {"path": "o"}}, overrides=["input.id_column=cid"])
    assert cfg.input.id_column == "cid"


# --------------------------------------------------------------------------------------------
# --set value parsing


@pytest.mark.parametrize("text, keys, value", [
    ("kmeans.k=12", ["kmeans", "k"], 12),
    ("kmeans.tol=1.0e-3", ["kmeans", "tol"], 1e-3),
    ("preprocess.pca.enabled=false", ["preprocess", "pca", "enabled"], False),
    ("report.enabled=true", ["report", "enabled"], True),
    ("hierarchical.levels=[4, 16]", ["hierarchical", "levels"], [4, 16]),
    ("job.run_date=2026-11-01", ["job", "run_date"], dt.date(2026, 11, 1)),
    ("input.label_column=null", ["input", "label_column"], None),
    ("input.label_column=", ["input", "label_column"], None),
    ("job.name=a=b", ["job", "name"], "a=b"),
    (" kmeans.k =3", ["kmeans", "k"], 3),
])
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


def test_set_values_are_typed():
    cfg = load_config(data=base(), overrides=[
        "kmeans.k=5",
        "kmeans.seed=7",
        "kmeans.tol=0.001",
        "preprocess.pca.enabled=false",
        "hierarchical.levels=[2, 8]",
        "job.run_date=2026-01-02",
        "input.feature_columns=[age, income]",
        "input.label_column=seg",
        "input.label_column=null",  # later overrides win
    ])
    assert cfg.kmeans.k == 5 and isinstance(cfg.kmeans.k, int)
    assert cfg.kmeans.seed == 7
    assert cfg.kmeans.tol == pytest.approx(0.001)
    assert cfg.preprocess.pca.enabled is False
    assert cfg.hierarchical.levels == [2, 8]
    assert cfg.job.run_date == dt.date(2026, 1, 2)
    assert cfg.input.feature_columns == ["age", "income"]
    assert cfg.input.label_column is None


def test_set_float_without_dot_still_validates():
    # YAML 1.1 reads 1e-3 as a string; the float field still accepts it
    assert load_config(data=base(), overrides=["kmeans.tol=1e-3"]).kmeans.tol == pytest.approx(1e-3)


def test_set_dict_keys_with_dots():
    cfg = load_config(data=base(), overrides=[
        "spark.conf.spark.sql.shuffle.partitions=4",
        "spark.conf.spark.sql.adaptive.enabled=false",
        "spark.conf.spark.driver.memory=2g",
        "output.storage_options.AWS_REGION=eu-west-1",
    ])
    assert cfg.spark.conf == {
        "spark.sql.shuffle.partitions": 4,
        "spark.sql.adaptive.enabled": False,
        "spark.driver.memory": "2g",
    }
    assert cfg.output.storage_options == {"AWS_REGION": "eu-west-1"}


def test_set_dict_key_overrides_yaml_value():
    cfg = load_config(path=LOCAL_YAML, overrides=["spark.conf.spark.sql.shuffle.partitions=4"])
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == 4
    assert cfg.spark.conf["spark.driver.memory"] == "4g"  # siblings kept


def test_set_creates_missing_sections():
    cfg = load_config(data=base(), overrides=["preprocess.pca.components=3", "spark.conf.spark.ui.port=4050"])
    assert cfg.preprocess.pca.components == 3
    assert cfg.spark.conf == {"spark.ui.port": 4050}


def test_set_invalid_yaml_value():
    msg = error_of(data=base(), overrides=["hierarchical.levels=[1, 2"])
    assert "hierarchical.levels" in msg and "not valid YAML" in msg


def test_data_is_not_mutated():
    data = base()
    load_config(data=data, overrides=["kmeans.k=3", "spark.conf.a.b=1"])
    assert data == base()


# --------------------------------------------------------------------------------------------
# mangled files


def test_bad_indentation(tmp_path):
    p = write(tmp_path, "input:\n  path: x\n   id_column: id\noutput:\n  path: o\n")
    msg = error_of(path=p)
    assert str(p) in msg and "not valid YAML" in msg
    assert "line 3" in msg  # where the problem is


def test_tab_indentation(tmp_path):
    p = write(tmp_path, "input:\n\tpath: x\n")
    msg = error_of(path=p)
    assert str(p) in msg and "not valid YAML" in msg


def test_top_level_list(tmp_path):
    p = write(tmp_path, "- input\n- output\n")
    msg = error_of(path=p)
    assert str(p) in msg and "mapping" in msg and "list" in msg


def test_top_level_scalar(tmp_path):
    p = write(tmp_path, "just a string\n")
    msg = error_of(path=p)
    assert str(p) in msg and "mapping" in msg


def test_section_that_is_not_a_mapping(tmp_path):
    p = write(tmp_path, "input: {path: x, id_column: id}\noutput: {path: o}\nkmeans: 8\n")
    msg = error_of(path=p)
    assert "'kmeans'" in msg and str(p) in msg


def test_file_does_not_exist(tmp_path):
    p = tmp_path / "nope.yaml"
    msg = error_of(path=p)
    assert str(p) in msg and "does not exist" in msg


def test_directory_is_not_a_config(tmp_path):
    msg = error_of(path=tmp_path)
    assert str(tmp_path) in msg


def test_no_config_at_all():
    assert "--config" in error_of()


def test_python_tag_is_rejected_and_not_executed(tmp_path):
    marker = tmp_path / "PWNED"
    p = write(tmp_path, f'input: !!python/object/apply:os.system ["touch {marker}"]\n'
                        "output: {path: o}\n")
    msg = error_of(path=p)
    assert str(p) in msg and "python/object/apply:os.system" in msg
    assert not marker.exists()


def test_python_tag_in_set_is_rejected_and_not_executed(tmp_path):
    marker = tmp_path / "PWNED"
    with pytest.raises(ConfigError):
        load_config(data=base(), overrides=[f'job.name=!!python/object/apply:os.system ["touch {marker}"]'])
    assert not marker.exists()


def test_config_values_are_data_not_code(tmp_path):
    # a string that looks like code stays a string and is only checked against the pattern
    p = write(tmp_path, 'input: {path: "__import__(\'os\').system(\'echo hi\')", id_column: id}\n'
                        "output: {path: o}\n")
    cfg = load_config(path=p)
    assert cfg.input.path == "__import__('os').system('echo hi')"


# --------------------------------------------------------------------------------------------
# options of the config contract that this version refuses


@pytest.mark.parametrize("override, shown", [
    ("preprocess.normalize=true", "preprocess.normalize=true"),
])
def test_unsupported_options_are_refused(override, shown):
    msg = error_of(data=base(), overrides=[override])
    assert "not supported" in msg
    assert shown in msg


def test_unsupported_options_all_named(tmp_path):
    p = write(tmp_path, "input: {path: x, id_column: id}\noutput: {path: o}\n"
                        "preprocess: {normalize: true}\n")
    msg = error_of(path=p)
    assert "preprocess.normalize" in msg and str(p) in msg


def test_seeding_only_seeds_by_default():
    from clusterlake.config import load_config

    assert load_config(data=base(), overrides=["kmeans.max_iter=0"]).kmeans.init == "kmeans||"


def test_vector_column_accepted_with_or_without_named_features():
    from clusterlake.config import load_config

    assert load_config(data=base(), overrides=["input.vector_column=vec"]).input.vector_column == "vec"
    cfg = load_config(data=base(), overrides=["input.vector_column=vec", "input.feature_columns=[a, b]",
                                              "input.vector_size=8"])
    assert (cfg.input.feature_columns, cfg.input.vector_size) == (["a", "b"], 8)


@pytest.mark.parametrize("overrides, hint", [
    (["input.vector_column=vec", "input.feature_columns=[vec, a]"], "must not list the vector_column 'vec'"),
    (["input.vector_column=id"], "is also the id/label/weight column"),
    (["input.vector_size=8"], "vector_size needs input.vector_column"),
    (["input.vector_column=vec", "input.vector_size=0"], "vector_size"),
    (["input.vector_column=vec", "input.profile_columns=[price, vec]"], "profile_columns ['vec'] are already"),
    (["input.feature_columns=[a]", "input.profile_columns=[a]"], "profile_columns ['a'] are already"),
    (["input.profile_columns=[p, p]"], "lists a column more than once"),
    (["kmeans.max_iter=0", "kmeans.algorithm=bisecting"], "kmeans.max_iter=0 (seeding only) needs"),
    (["kmeans.max_iter=0", "kmeans.engine=spark-mllib"], "kmeans.max_iter=0 (seeding only) needs"),
    (["kmeans.max_iter=0", "kmeans.init=previous"], "would keep yesterday's centroids unchanged forever"),
])
def test_vector_column_mistakes_named(overrides, hint):
    assert hint in error_of(data=base(), overrides=overrides)


@pytest.mark.parametrize("overrides, hint", [
    (["kmeans.engine=spark-mllib", "kmeans.distance=cosine"], "kmeans.engine=spark-mllib does not support kmeans.distance=cosine"),
    (["kmeans.engine=spark-mllib", "kmeans.algorithm=bisecting"], "does not support kmeans.algorithm=bisecting"),
    (["kmeans.engine=spark-mllib", "kmeans.init=previous"], "does not support kmeans.init=previous"),
    (["kmeans.algorithm=bisecting", "kmeans.init=random"], "does not apply to kmeans.algorithm=bisecting"),
    (["kmeans.engine=tensorflow"], "kmeans.engine"),
    (["kmeans.num_tasks=0"], "kmeans.num_tasks"),
])
def test_engine_option_combinations(overrides, hint):
    assert hint in error_of(data=base(), overrides=overrides)


def test_engine_options_accepted():
    cfg = load_config(data=base(), overrides=["kmeans.algorithm=bisecting", "kmeans.distance=cosine",
                                              "kmeans.num_tasks=2", "kmeans.init_steps=3"])
    assert cfg.kmeans.engine == "clusterlake" and cfg.kmeans.algorithm == "bisecting"
    cfg = load_config(data=base(), overrides=["kmeans.init=previous"])
    assert cfg.kmeans.init == "previous"


def test_supported_defaults_pass():
    cfg = load_config(data=base(), overrides=["kmeans.init=random", "density.enabled=false", "kmeans.k=2"])
    assert cfg.kmeans.init == "random" and cfg.density.enabled is False and cfg.kmeans.k == 2


def test_to_json_round_trips():
    cfg = load_config(data=base(), overrides=["kmeans.k=4", "job.run_date=2026-03-04"])
    again = load_config(data=__import__("json").loads(cfg.to_json()))
    assert again == cfg


@pytest.mark.parametrize("key", ["kmeans.max_iter", "kmeans.seed", "quality.sample_size", "kmeans.tol"])
def test_boolean_is_not_a_number(key):
    with pytest.raises(ConfigError, match=f"'{key}': expected a number, not a boolean"):
        load_config(data=_BASE_FOR_BOOL, overrides=[f"{key}=true"])


_BASE_FOR_BOOL = {"input": {"path": "x", "id_column": "id"}, "output": {"path": "o"}}


def test_unreadable_config_file_is_a_config_error(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(path=p)


def test_auto_k_and_gates_load_and_are_checked():
    cfg = load_config(data=base(), overrides=[
        "kmeans.k=auto", "kmeans.auto.criterion=dynamic", "kmeans.auto.min_cluster_share=0.05",
        "quality.gates.min_silhouette=0.2", "quality.gates.max_cluster_share=0.6", "quality.on_gate_failure=fail"])
    assert cfg.kmeans.k == "auto" and cfg.kmeans.auto.criterion == "dynamic"
    assert cfg.quality.gates.min_silhouette == 0.2 and cfg.quality.on_gate_failure == "fail"
    assert "kmeans.auto.min_k=9 is larger than kmeans.auto.max_k=4" in error_of(
        data=base(), overrides=["kmeans.auto.min_k=9", "kmeans.auto.max_k=4"])
    assert "max_noise_share needs the density pass" in error_of(
        data=base(), overrides=["quality.gates.max_noise_share=0.2"])
    assert "min_cluster_share is larger than" in error_of(
        data=base(), overrides=["quality.gates.min_cluster_share=0.5", "quality.gates.max_cluster_share=0.4"])


def test_to_json_redacts_credentials():
    cfg = load_config(data=base(), overrides=[
        "output.storage_options.AWS_SECRET_ACCESS_KEY=abc", "output.storage_options.AWS_REGION=eu-west-1",
        "spark.conf.spark.hadoop.fs.s3a.secret.key=xyz", "spark.conf.spark.executor.memory=4g",
    ])
    data = __import__("json").loads(cfg.to_json(redact=True))
    assert data["output"]["storage_options"] == {"AWS_SECRET_ACCESS_KEY": "***", "AWS_REGION": "***"}
    assert data["spark"]["conf"] == {"spark.hadoop.fs.s3a.secret.key": "***", "spark.executor.memory": "4g"}
    assert "abc" in cfg.to_json() and "xyz" not in cfg.to_json(redact=True)


# --------------------------------------------------------------------------------------------
# density and hierarchical passes


def test_density_and_hierarchical_sections_load():
    cfg = load_config(data=base(), overrides=[
        "density.enabled=true", "density.algorithm=dbscan", "density.eps=0.5", "density.sample_size=5000",
        "hierarchical.enabled=true", "hierarchical.linkage=average", "hierarchical.levels=[16, 4]",
        "job.driver_memory_gb=2.5"])
    assert cfg.density.enabled and cfg.density.eps == 0.5 and cfg.density.algorithm == "dbscan"
    assert cfg.hierarchical.levels == [4, 16]  # coarse to fine
    assert cfg.job.driver_memory_gb == 2.5


@pytest.mark.parametrize("overrides, needle", [
    (["density.eps=0.5"], "density.eps applies to density.algorithm=dbscan only"),
    (["density.algorithm=dbscan", "density.min_cluster_size=50"], "density.min_cluster_size applies to"),
    (["density.min_samples=500", "density.sample_size=200"], "density.min_samples=500 is larger"),
    (["density.eps=0"], "'density.eps'"),
    (["density.algorithm=optics"], "'density.algorithm'"),
    (["hierarchical.levels=[]"], "must list at least one number of clusters"),
    (["hierarchical.levels=[1, 4]"], "every level must be a number of clusters >= 2"),
    (["hierarchical.levels=[4, 4]"], "lists [4] more than once"),
    (["hierarchical.levels=[4, 64]", "hierarchical.sample_size=50"], "the finest level 64 has more clusters"),
    (["hierarchical.linkage=centroid"], "'hierarchical.linkage'"),
    (["job.driver_memory_gb=-1"], "'job.driver_memory_gb'"),
])
def test_bad_pass_settings_are_named(overrides, needle):
    assert needle in error_of(data=base(), overrides=overrides)
