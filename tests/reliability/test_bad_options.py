"""Numbers out of range, options that do not apply, flags argparse refuses: every command."""

from __future__ import annotations

import pytest

# (case id, argv with {model} {onnx} {images} {run} {table} {fused} filled in, keyword)
CASES = [
    # eval
    ("eval-limit-0", "eval {onnx} --data {images} --limit 0", "--limit"),
    ("eval-limit-negative", "eval {onnx} --data {images} --limit -1", "--limit"),
    ("eval-limit-text", "eval {onnx} --data {images} --limit ten", "not an integer"),
    ("eval-batch-size-0", "eval {onnx} --data {images} --batch-size 0", "--batch-size"),
    ("eval-batch-size-negative", "eval {onnx} --data {images} --batch-size -4", "--batch-size"),
    ("eval-threads-0", "eval {onnx} --data {images} --threads 0", "--threads"),
    ("eval-threads-negative", "eval {onnx} --data {images} --threads -2", "--threads"),
    ("eval-threads-float", "eval {onnx} --data {images} --threads 1.5", "not an integer"),
    ("eval-no-data", "eval {onnx}", "--data"),
    ("eval-unknown-flag", "eval {onnx} --data {images} --fast", "unrecognized"),
    ("eval-unknown-model", "eval levit_999 --data {images}", "levit_999"),
    ("eval-seed-negative", "eval {model} --data {images} --seed -1", "--seed"),
    # bench
    ("bench-threads-0", "bench {onnx} --threads 0", "--threads"),
    ("bench-threads-negative", "bench {onnx} --threads 1 -3", "--threads"),
    ("bench-batch-0", "bench {onnx} --batch 0", "--batch"),
    ("bench-warmup-negative", "bench {onnx} --warmup -1", "--warmup"),
    ("bench-seconds-0", "bench {onnx} --seconds 0", "--seconds"),
    ("bench-seconds-negative", "bench {onnx} --seconds -2", "--seconds"),
    ("bench-seconds-nan", "bench {onnx} --seconds nan", "--seconds"),
    ("bench-seconds-inf", "bench {onnx} --seconds inf", "--seconds"),
    ("bench-iterations-0", "bench {onnx} --iterations 0", "--iterations"),
    ("bench-no-artifact", "bench", "required"),
    # export
    ("export-no-model", "export", "required"),
    ("export-unknown-model", "export levit_999", "unknown model"),
    ("export-unknown-target", "export {model} --target vulkan", "vulkan"),
    ("export-int8-no-calib", "export {model} --int8 -o {out}", "calibration data"),
    ("export-calib-size-0", "export {model} --int8 --calib {images} --calib-size 0",
     "--calib-size"),
    ("export-calib-size-negative", "export {model} --int8 --calib {images} --calib-size -5",
     "--calib-size"),
    ("export-method-unknown", "export {model} --int8 --calib {images} --method best", "--method"),
    ("export-max-drop-no-int8", "export {model} --max-drop 1 -o {out}", "only apply with --int8"),
    ("export-max-drop-negative", "export {model} --int8 --calib {images} --max-drop -1",
     "--max-drop"),
    ("export-max-drop-nan", "export {model} --int8 --calib {images} --max-drop nan", "--max-drop"),
    ("export-max-drop-with-optimize", "export {model} --target tflite --int8 --calib {images} "
     "--max-drop 1 --optimize latency -o {out}", "max-drop"),
    ("export-max-drop-executorch", "export {model} --target executorch --int8 --calib {images} "
     "--max-drop 1 -o {out}", "max-drop"),
    ("export-calib-no-int8", "export {model} --calib {images} -o {out}", "only apply with --int8"),
    ("export-calib-table-no-int8", "export {model} --calib-table {table} -o {out}",
     "only apply with --int8"),
    ("export-opset-99", "export {model} --opset 99 -o {out}", "--opset 99"),
    ("export-opset-5", "export {model} --opset 5 -o {out}", "--opset 5"),
    ("export-opset-text", "export {model} --opset new -o {out}", "--opset"),
    ("export-int8-io-onnx", "export {model} --int8-io -o {out}", "--int8-io"),
    ("export-int8-io-tensorrt", "export {model} --target tensorrt --int8-io -o {out}",
     "--int8-io"),
    ("export-float-ops-onnx", "export {model} --float-ops SOFTMAX -o {out}", "--float-ops"),
    ("export-float-ops-unknown", "export {model} --target tflite --int8 --calib {images} "
     "--float-ops WARP_DRIVE -o {out}", "WARP_DRIVE"),
    ("export-deployment-target-onnx", "export {model} --deployment-target iOS17 -o {out}",
     "--deployment-target"),
    ("export-deployment-target-bad", "export {model} --target coreml --deployment-target "
     "Android14 -o {out}", "Android14"),
    ("export-precision-unknown", "export {model} --precision int4 -o {out}", "int4"),
    ("export-precision-fp16-onnx", "export {model} --precision fp16 -o {out}", "fp16"),
    ("export-precision-w8a8-tflite", "export {model} --target tflite --precision w8a8 -o {out}",
     "w8a8"),
    ("export-limit-0", "export {model} --eval-data {images} --limit 0", "--limit"),
    ("export-seed-text", "export {model} --seed x", "not an integer"),
    ("export-checkpoint-and-pretrained-tiny", "export {model} --pretrained -o {out}",
     "pretrained"),
    # calibrate / fuse
    ("calibrate-no-data", "calibrate {model} -o {out}.json", "--data"),
    ("calibrate-no-out", "calibrate {model} --data {images}", "-o"),
    ("calibrate-size-0", "calibrate {model} --data {images} --calib-size 0 -o {out}.json",
     "--calib-size"),
    ("calibrate-method-unknown", "calibrate {model} --data {images} --method max -o {out}.json",
     "--method"),
    ("fuse-unknown-model", "fuse levit_999 -o {out}", "unknown model"),
    # qat
    ("qat-device-tpu", "qat {model} --data {images} --calib-table {table} --device tpu9 "
     "-o {out}", "tpu9"),
    ("qat-steps-0", "qat {model} --data {images} --calib-table {table} --steps 0 -o {out}",
     "--steps"),
    ("qat-batch-0", "qat {model} --data {images} --calib-table {table} --batch 0 -o {out}",
     "--batch"),
    ("qat-lr-negative", "qat {model} --data {images} --calib-table {table} --lr -1 -o {out}",
     "--lr"),
    ("qat-crop-scale-2", "qat {model} --data {images} --calib-table {table} --crop-scale 2 "
     "-o {out}", "--crop-scale"),
    ("qat-steps-and-epochs", "qat {model} --data {images} --calib-table {table} --steps 2 "
     "--epochs 1 -o {out}", "--epochs"),
    ("qat-save-every-0", "qat {model} --data {images} --calib-table {table} --save-every 0 "
     "-o {out}", "--save-every"),
    ("qat-images-0", "qat {model} --data {images} --calib-table {table} --images 0 -o {out}",
     "--images"),
    ("qat-lr-unit-bad", "qat {model} --data {images} --calib-table {table} --lr-unit km "
     "-o {out}", "--lr-unit"),
    ("qat-target-unknown", "qat {model} --data {images} --calib-table {table} --target vulkan "
     "-o {out}", "vulkan"),
    ("qat-no-calib-table", "qat {model} --data {images} -o {out}", "--calib-table"),
    # bundle / report / run
    ("bundle-no-device", "bundle {run} -o {out}", "--device"),
    ("bundle-samples-0", "bundle {run} --device x86-host --samples 0 -o {out}", "--samples"),
    ("bundle-unknown-device", "bundle {run} --device pi9 -o {out}", "pi9"),
    ("report-no-runs", "report -o {out}", "required"),
    ("run-no-config", "run", "required"),
    ("unknown-command", "deploy {model}", "invalid choice"),
]


def _argv(template: str, world, out) -> list[str]:
    fill = {
        "model": world.model, "onnx": world.onnx, "images": world.images, "run": world.run,
        "table": world.table, "fused": world.fused, "out": out,
    }  # fmt: skip
    return [part.format(**fill) for part in template.split()]


@pytest.mark.parametrize("template,keyword", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_option_is_one_clear_line(template, keyword, world, expect_error, request) -> None:
    out = world.path("options-" + request.node.callspec.id)
    expect_error(_argv(template, world, out), keyword, folder=out.parent)
    assert not out.exists() or not any(out.iterdir() if out.is_dir() else [out]), (
        f"{out} was written although the input was refused up front"
    )
