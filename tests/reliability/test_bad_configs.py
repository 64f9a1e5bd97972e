"""`edgevt run CONFIG.toml`: typos, wrong types, missing pieces and impossible combinations
fail before any stage runs, naming the key by its path in the file."""

from __future__ import annotations

import pytest

# A config that would run: each case changes one thing.
GOOD = """\
out = "out"
[model]
name = "{model}"
[calibration]
data = "{images}"
size = 2
[[export]]
target = "onnx"
int8 = true
[eval]
data = "{images}"
limit = 2
"""

CASES = [
    ("unknown-section", GOOD + "[exprot]\ntarget = 'onnx'\n", "[exprot]: unknown section"),
    ("section-near-miss", GOOD + "[benchmark]\nthreads = [1]\n", "did you mean bench"),
    ("model-key-typo-checkpoint", GOOD.replace('[model]\n', '[model]\nchekpoint = "w.pth"\n'),
     "[model].chekpoint: unknown key; did you mean checkpoint"),
    ("export-key-typo", GOOD + "[[export]]\ntarget = 'onnx'\nmax_dorp = 1.0\n",
     "[[export]][1].max_dorp: unknown key; did you mean max_drop"),
    ("calibration-key-typo", GOOD.replace("size = 2", "sise = 2"),
     "[calibration].sise: unknown key; did you mean size"),
    ("eval-key-typo", GOOD.replace("limit = 2", "limt = 2"), "did you mean limit"),
    ("report-key-typo", GOOD + "[report]\ntitel = 'x'\n", "did you mean title"),
    ("model-missing", GOOD.replace('[model]\nname = "{model}"\n', ""), "[model] needs name"),
    ("model-name-unknown", GOOD.replace('name = "{model}"', 'name = "levit_999"'), "levit_999"),
    ("model-name-a-number", GOOD.replace('name = "{model}"', "name = 7"), "[model].name = 7"),
    ("model-seed-a-string", GOOD.replace('[model]\n', '[model]\nseed = "zero"\n'),
     "[model].seed"),
    ("model-pretrained-a-string", GOOD.replace('[model]\n', '[model]\npretrained = "yes"\n'),
     "true or false"),
    ("checkpoint-missing", GOOD.replace('[model]\n', '[model]\ncheckpoint = "none.pth"\n'),
     "does not exist"),
    ("no-export", GOOD.replace('[[export]]\ntarget = "onnx"\nint8 = true\n', ""),
     "at least one [[export]]"),
    ("export-a-table-not-a-list", GOOD.replace("[[export]]", "[export]"),
     "[[export]] tables"),
    ("devices-a-table-not-a-list", GOOD + "[devices]\nname = 'x86-host'\n", "[[devices]] tables"),
    ("model-a-list", GOOD.replace("[model]", "[[model]]"), "[model] table"),
    ("export-target-unknown", GOOD.replace('target = "onnx"', 'target = "vulkan"'), "vulkan"),
    ("export-target-a-number", GOOD.replace('target = "onnx"', "target = 1"), "expected a string"),
    ("export-int8-a-string", GOOD.replace("int8 = true", 'int8 = "yes"'), "true or false"),
    ("export-precisions-a-string", GOOD.replace("int8 = true", 'precisions = "int8"'),
     "expected a list"),
    ("export-precision-unknown", GOOD.replace("int8 = true", 'precisions = ["int4"]'), "int4"),
    ("export-max-drop-a-string", GOOD.replace("int8 = true", 'int8 = true\nmax_drop = "1"'),
     "max_drop"),
    ("export-option-wrong-type", GOOD.replace("int8 = true", 'int8 = true\nopset = "17"'),
     "opset"),
    ("export-option-of-another-target", GOOD.replace("int8 = true", "int8 = true\nint8_io = true"),
     "int8-io"),
    ("export-opset-out-of-range", GOOD.replace("int8 = true", "opset = 99"), "99"),
    ("export-quant-config-missing", GOOD.replace("int8 = true",
     'int8 = true\nquant_config = "none.json"'), "does not exist"),
    ("export-max-drop-with-optimize", GOOD.replace('target = "onnx"\nint8 = true',
     'target = "tflite"\nint8 = true\nmax_drop = 1.0\noptimize = "latency"'), "max-drop"),
    ("int8-without-calibration", GOOD.replace('[calibration]\ndata = "{images}"\nsize = 2\n', ""),
     "[calibration] data"),
    ("calibration-size-a-string", GOOD.replace("size = 2", 'size = "many"'), "size"),
    ("calibration-size-0", GOOD.replace("size = 2", "size = 0"), "must be above 0"),
    ("calibration-data-missing", GOOD.replace('data = "{images}"\nsize', 'data = "none"\nsize'),
     "does not exist"),
    ("eval-limit-0", GOOD.replace("limit = 2", "limit = 0"), "must be above 0"),
    ("eval-limit-negative", GOOD.replace("limit = 2", "limit = -3"), "must be above 0"),
    ("eval-limit-float", GOOD.replace("limit = 2", "limit = 2.5"), "expected an integer"),
    ("bench-threads-0", GOOD + "[bench]\nthreads = [0]\n", "[bench].threads"),
    ("bench-threads-strings", GOOD + "[bench]\nthreads = ['two']\n", "[bench].threads"),
    ("bench-threads-a-number", GOOD + "[bench]\nthreads = 2\n", "expected a list"),
    ("bench-seconds-0", GOOD + "[bench]\nseconds = 0\n", "must be above 0"),
    ("bench-seconds-a-string", GOOD + "[bench]\nseconds = 'long'\n", "expected an integer or"),
    ("device-unknown", GOOD + "[[devices]]\nname = 'pi9'\n", "pi9"),
    ("device-without-name", GOOD + "[[devices]]\nrun = 'onnx-int8'\n", "needs name"),
    ("device-run-unknown", GOOD + "[[devices]]\nname = 'x86-host'\nrun = 'onnx-int9'\n",
     "did you mean onnx-int8"),
    ("device-samples-0", GOOD + "[[devices]]\nname = 'x86-host'\nsamples = 0\n",
     "must be above 0"),
    ("out-a-number", GOOD.replace('out = "out"', "out = 3"), "out must be a path"),
    ("out-a-file", GOOD.replace('out = "out"', 'out = "afile"'), "is a file"),
    ("not-toml", "[model\nname = 'x'\n", "not valid TOML"),
    ("not-text", None, "not valid TOML"),
    ("empty-file", "", "[model] needs name"),
]


@pytest.mark.parametrize("text,keyword", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_fails_before_any_stage(text, keyword, world, expect_error, request):
    d = world.path("config-" + request.node.callspec.id)
    d.mkdir()
    (d / "afile").write_text("x")
    config = d / "run.toml"
    if text is None:
        config.write_bytes(b"\xff\xfe\x00garbage")
    else:
        config.write_text(text.replace("{model}", world.model).replace("{images}",
                                                                       str(world.images)))
    expect_error(["run", config], keyword, folder=d)
    assert not (d / "out").exists(), "a stage ran although the config is wrong"


def test_a_missing_config(world, expect_error, tmp_path):
    expect_error(["run", tmp_path / "none.toml"], "does not exist")
