"""Hostile or unlucky adapter files (built here in tmp_path): each is one clear line, within seconds,
never a hang, a crash, a traceback or a silently wrong number."""
from __future__ import annotations

import json
import os
import shutil
import socket
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from analysis.adapters import load_adapter
from analysis.adapters.describe import json_safe
from analysis.adapters.limits import check_dense_budget
from analysis.adapters.model import sha256_of_files
from analysis.adapters.safe_text import markdown_text, plain_text
from analysis.cli import main
from analysis.commands import inspect as inspect_cmd
from analysis.errors import AdapterFormatError, ResourceLimitError

Q = "base_model.model.model.layers.0.self_attn.q_proj"
K = "lora_unet_down_blocks_0_attentions_0_proj_in"
pytestmark = pytest.mark.timeout(60)  # a regression here is a hang: fail it instead


def lora(seed: int = 0, r: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"{Q}.lora_A.weight": torch.randn(r, 16, generator=g), f"{Q}.lora_B.weight": torch.randn(8, r, generator=g)}


def peft_dir(tmp: Path, tensors: dict[str, torch.Tensor] | None = None, **config: object) -> Path:
    d = tmp / "adapter"
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors if tensors is not None else lora(), d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8} | config))
    return d


def raw_safetensors(path: Path, header: object, data: bytes = b"") -> Path:
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def refused(path: Path, *needles: str, error: type[Exception] = AdapterFormatError) -> str:
    with pytest.raises(error) as info:
        load_adapter(path)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 800, msg
    for n in needles:
        assert n in msg, msg
    return msg


# --- non-regular files: refused from stat, never opened (a FIFO would block forever) ---------------------

def test_fifo_as_weights_config_or_direct_path(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    refused(fifo, "pipe.safetensors", "weights file is a FIFO (named pipe), not a regular file")
    d = peft_dir(tmp_path)
    (d / "adapter_model.safetensors").unlink()
    os.mkfifo(d / "adapter_model.safetensors")
    refused(d, "adapter_model.safetensors", "is a FIFO")
    d2 = peft_dir(tmp_path / "two")
    (d2 / "adapter_config.json").unlink()
    os.mkfifo(d2 / "adapter_config.json")
    refused(d2, "adapter_config.json", "adapter config is a FIFO")
    solo = tmp_path / "solo"
    solo.mkdir()
    os.mkfifo(solo / "x.safetensors")  # the only candidate in a folder: skipped, so "no adapter files"
    refused(solo, "no adapter files")


def test_directory_device_and_socket_where_a_file_is_expected(tmp_path: Path) -> None:
    d = peft_dir(tmp_path)
    (d / "adapter_config.json").unlink()
    (d / "adapter_config.json").mkdir()
    refused(d, "adapter_config.json", "adapter config is a directory")
    (d / "adapter_config.json").rmdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").unlink()
    (d / "adapter_model.safetensors").mkdir()
    refused(d, "adapter_model.safetensors", "weights file is a directory")
    if os.path.exists("/dev/null"):
        refused(Path("/dev/null"), "/dev/null", "character device")
    sock_path = Path(f"/tmp/atlas-{os.getpid()}.safetensors")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        try:
            refused(sock_path, "a socket, not a regular file")
        finally:
            sock_path.unlink()


def test_path_with_nul_or_thousands_of_characters(tmp_path: Path) -> None:
    refused(tmp_path / "a\0b", "cannot read", "null")
    msg = refused(tmp_path / ("x" * 5000), "cannot read")
    assert len(msg) < 400


def test_file_name_with_newline_and_escape_still_gives_one_line(tmp_path: Path) -> None:
    evil = tmp_path / "evil\n\x1b[2Jname.safetensors"
    evil.write_bytes(b"\x01\x02")
    msg = refused(evil, "evil [2Jname.safetensors", "shorter than the 8-byte header")
    assert "\x1b" not in msg


# --- rewritten in place: the hash names the numbers in use; truncation never kills the process ------------

def test_same_size_rewrite_after_load_changes_nothing_loaded(tmp_path: Path) -> None:
    d = peft_dir(tmp_path)
    weights = d / "adapter_model.safetensors"
    keep = tmp_path / "orig"
    shutil.copytree(d, keep)
    adapter = load_adapter(d)
    before = adapter.modules["model.layers.0.self_attn.q_proj"].dense().clone()
    save_file(lora(seed=1), tmp_path / "other.safetensors")
    assert (tmp_path / "other.safetensors").stat().st_size == weights.stat().st_size
    with open(weights, "r+b") as f:  # `cp other over it`: same inode, same size, new numbers
        f.write((tmp_path / "other.safetensors").read_bytes())
    torch.testing.assert_close(adapter.modules["model.layers.0.self_attn.q_proj"].dense(), before, rtol=0, atol=0)
    assert adapter.sha256 == sha256_of_files([keep / "adapter_model.safetensors", keep / "adapter_config.json"])
    reloaded = load_adapter(d)
    assert reloaded.sha256 == sha256_of_files(reloaded.files) != adapter.sha256
    assert not torch.equal(reloaded.modules["model.layers.0.self_attn.q_proj"].dense(), before)


def test_sha256_of_the_bytes_read_equals_the_file_hash(real_adapters: Path) -> None:
    """Recipes recorded before the read-once reader still verify: same hash definition, same value."""
    for rel in ("gpt2-tigrinya-lora", "thesotti-gpt2-lora-bin", "catundchat-sd15-lora/pytorch_lora_weights.bin"):
        adapter = load_adapter(real_adapters / rel)
        assert adapter.sha256 == sha256_of_files(adapter.files), rel


def test_truncation_after_load_is_harmless(tmp_path: Path) -> None:
    d = peft_dir(tmp_path)
    adapter = load_adapter(d)
    with open(d / "adapter_model.safetensors", "r+b") as f:
        f.truncate(10)  # with a memory map, touching the tensors now would be SIGBUS
    assert adapter.total_norm() > 0
    refused(d, "adapter_model.safetensors", "does not fit")


# --- size bombs: estimated from the header, refused with the size ----------------------------------------

def test_lokr_dense_size_is_checked_before_anything_is_built(tmp_path: Path) -> None:
    t = {f"{K}.lokr_w1_a": torch.ones(1000, 1), f"{K}.lokr_w1_b": torch.ones(1, 1000),
         f"{K}.lokr_w2_a": torch.ones(1000, 1), f"{K}.lokr_w2_b": torch.ones(1, 1000)}
    save_file(t, tmp_path / "bomb.safetensors")  # 16 KB of factors, a 1000000 x 1000000 dense update
    msg = refused(tmp_path / "bomb.safetensors", f"module '{K}'", "dense 1000000x1000000 float64 needs 7.276 TiB",
                  "over the limit of 2 GiB", "ADAPTER_ATLAS_MAX_DENSE_BYTES", error=ResourceLimitError)
    assert msg.startswith(str(tmp_path / "bomb.safetensors"))


def test_dense_budget_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    t = {f"{K}.hada_w1_a": torch.randn(64, 2, generator=g), f"{K}.hada_w1_b": torch.randn(2, 64, generator=g),
         f"{K}.hada_w2_a": torch.randn(64, 2, generator=g), f"{K}.hada_w2_b": torch.randn(2, 64, generator=g)}
    save_file(t, tmp_path / "loha.safetensors")
    assert load_adapter(tmp_path / "loha.safetensors").modules  # 64x64: fine by default
    monkeypatch.setenv("ADAPTER_ATLAS_MAX_DENSE_BYTES", "10000")
    refused(tmp_path / "loha.safetensors", "dense 64x64 float64 needs 32 KiB", "9.766 KiB", error=ResourceLimitError)
    monkeypatch.setenv("ADAPTER_ATLAS_MAX_DENSE_BYTES", "lots")
    refused(tmp_path / "loha.safetensors", "ADAPTER_ATLAS_MAX_DENSE_BYTES='lots' is not a number",
            error=ResourceLimitError)


def test_thin_huge_lowrank_loads_factored_and_densify_is_gated(tmp_path: Path) -> None:
    n = 100_000
    d = peft_dir(tmp_path, {f"{Q}.lora_A.weight": torch.full((1, n), 1e-3), f"{Q}.lora_B.weight": torch.ones(n, 1)},
                 r=1, lora_alpha=1)
    delta = load_adapter(d).modules["model.layers.0.self_attn.q_proj"]
    assert delta.shape == (n, n) and delta.frobenius_norm() == pytest.approx(n * 1e-3, rel=1e-5)  # factored
    with pytest.raises(ResourceLimitError, match=r"q_proj: dense 100000x100000 float32 needs 37.25 GiB"):
        check_dense_budget(delta.shape, torch.float32, "q_proj")
    assert check_dense_budget((4096, 4096), torch.float32, "q_proj") == 4096 * 4096 * 4


def test_file_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_ATLAS_MAX_FILE_BYTES", "100")
    refused(peft_dir(tmp_path), "adapter_model.safetensors", "over the limit of 100 B", error=ResourceLimitError)


@pytest.mark.parametrize(("header", "needle"), [
    ({"x.lora_A.weight": {"dtype": "F32", "shape": [2 ** 62, 2 ** 62], "data_offsets": [0, 16]}}, "[0, 2^40]"),
    ({"x.lora_A.weight": {"dtype": "F32", "shape": [0, 2 ** 70], "data_offsets": [0, 0]}}, "[0, 2^40]"),
    ({"x.lora_A.weight": {"dtype": "F32", "shape": [1e30, 1], "data_offsets": [0, 16]}}, "[0, 2^40]"),
    ({"x.lora_A.weight": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}}, "[0, 2^40]"),
    ({"x.lora_A.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 2 ** 80]}}, "span"),
    ({"x.lora_A.weight": {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}}, "unsupported dtype"),
    ({"x.lora_A.weight": [1, 2, 3]}, "header entry must have dtype, shape and data_offsets"),
    ({"__metadata__": ["a"]}, "__metadata__ must map strings to strings"),
    ([{"dtype": "F32"}], "a JSON list, expected an object"),
    (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    (b'{"x.lora_A.weight": {}, "x.lora_A.weight": {}}', "appears twice"),
    ({"x.lora_A\n.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "control characters"),
])
def test_hostile_headers_are_one_line(tmp_path: Path, header: object, needle: str) -> None:
    refused(raw_safetensors(tmp_path / "h.safetensors", header, bytes(16)), "h.safetensors", needle)


def test_tensor_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from analysis.adapters import safetensors_io

    monkeypatch.setattr(safetensors_io, "MAX_TENSORS", 3)
    header = {f"m{i}.lora_A.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
              for i in range(4)}
    refused(raw_safetensors(tmp_path / "many.safetensors", header, bytes(16)), "4 tensors in one file (at most 3")



def _entry(i: int) -> str:
    return f'"m{i}.lora_A.weight":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}'


@pytest.mark.parametrize("kind", ["entries", "metadata", "shape"])
def test_huge_valid_header_is_refused_before_parsing(tmp_path: Path, kind: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A ~100 MB header of valid JSON took 86 s and 1.6 GB to refuse: now its size is checked against what its
    tensor count can need before any parsing (json.loads must not run)."""
    from analysis.adapters import safetensors_io

    if kind == "entries":  # 1.1 million well-formed entries
        blob = ("{" + ",".join(_entry(i) for i in range(1_100_000)) + "}").encode()
        expect = "tensors in one file (at most 50000"
    elif kind == "metadata":  # one 100 MB metadata string and one tensor
        blob = ('{"__metadata__":{"k":"' + "x" * 100_000_000 + '"},' + _entry(0) + "}").encode()
        expect = "for 1 tensors: at most"
    else:  # one tensor whose shape lists 20 million numbers
        blob = ('{"m.lora_A.weight":{"dtype":"F32","shape":[' + ",".join(["1"] * 20_000_000)
                + '],"data_offsets":[0,4]}}').encode()
        expect = "refused before parsing"
    path = raw_safetensors(tmp_path / "big.safetensors", blob, bytes(8))

    def no_parse(*_a: object, **_k: object) -> None:
        raise AssertionError("the header was parsed")

    monkeypatch.setattr(safetensors_io.json, "loads", no_parse)
    refused(path, "big.safetensors", expect)


def test_header_with_real_sized_metadata_still_loads(tmp_path: Path) -> None:
    """The budget leaves room for real metadata (kohya writes MBs of training metadata)."""
    d = tmp_path / "adapter"
    d.mkdir()
    save_file(lora(), d / "adapter_model.safetensors", metadata={"ss_tag_frequency": "t" * (4 << 20)})
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    assert len(load_adapter(d).modules) == 1


# --- NaN/Inf and overflow: refused at load, naming the tensor or module ----------------------------------

def test_nonfinite_alpha_tensor_and_overflowing_module(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    save_file({f"{K}.lora_down.weight": torch.randn(4, 8, generator=g), f"{K}.lora_up.weight": torch.randn(8, 4),
               f"{K}.alpha": torch.tensor(float("inf"))}, tmp_path / "k.safetensors")
    refused(tmp_path / "k.safetensors", f"tensor '{K}.alpha' has 1 NaN/Inf values")
    big = {f"{Q}.lora_A.weight": torch.full((4, 16), 1e20), f"{Q}.lora_B.weight": torch.full((8, 4), 1e20)}
    refused(peft_dir(tmp_path, big), "module 'model.layers.0.self_attn.q_proj'", "could reach 8e+40",
            "float32 math on it would overflow")


@pytest.mark.parametrize("bad", ["hada_w1_a", "hada_w2_b"])
@pytest.mark.parametrize("shape", [(), (4,)])
def test_zero_and_one_d_lycoris_factors(tmp_path: Path, bad: str, shape: tuple[int, ...]) -> None:
    t = {f"{K}.hada_w1_a": torch.ones(8, 2), f"{K}.hada_w1_b": torch.ones(2, 8),
         f"{K}.hada_w2_a": torch.ones(8, 2), f"{K}.hada_w2_b": torch.ones(2, 8)}
    t[f"{K}.{bad}"] = torch.ones(shape)
    save_file(t, tmp_path / "l.safetensors")
    refused(tmp_path / "l.safetensors", f"tensor '{K}.{bad}'", f"shape {list(shape)} is not a LyCORIS factor")


# --- a module stored twice: both keys named, none silently dropped ---------------------------------------

def test_module_stored_twice_names_both_keys(tmp_path: Path) -> None:
    t = lora()
    short = Q.removeprefix("base_model.model.")
    t[f"{short}.lora_A.weight"], t[f"{short}.lora_B.weight"] = torch.ones(4, 16), torch.ones(8, 4)
    save_file(t, tmp_path / "twice.safetensors")
    refused(tmp_path / "twice.safetensors", f"'{Q}.lora_A.weight'", f"'{short}.lora_A.weight'", "stored twice")
    old = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    o = {f"{old}.processor.to_out_lora.down.weight": torch.ones(4, 8), f"{old}.processor.to_out_lora.up.weight":
         torch.ones(8, 4), f"{old}.to_out_lora.down.weight": torch.ones(4, 8), f"{old}.to_out_lora.up.weight":
         torch.ones(8, 4)}
    save_file(o, tmp_path / "old.safetensors")
    refused(tmp_path / "old.safetensors", f"'{old}.processor.to_out_lora.down.weight'",
            f"'{old}.to_out_lora.down.weight'", "stored twice")
    te = "text_model_encoder_layers_0_self_attn_q_proj"
    k = {f"lora_te_{te}.lora_down.weight": torch.ones(4, 8), f"lora_te_{te}.lora_up.weight": torch.ones(8, 4),
         f"lora_te1_{te}.lora_down.weight": torch.ones(4, 8), f"lora_te1_{te}.lora_up.weight": torch.ones(8, 4)}
    save_file(k, tmp_path / "te.safetensors")
    refused(tmp_path / "te.safetensors", f"lora_te_{te}.lora_down.weight", f"lora_te1_{te}.lora_down.weight",
            "stored twice")


# --- output: strict JSON, inert text ---------------------------------------------------------------------

def strict_loads(text: str) -> object:
    def no(name: str) -> None:
        raise ValueError(f"bare {name} in JSON output")
    return json.loads(text, parse_constant=no)


def test_inspect_json_is_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    d = peft_dir(tmp_path, base_model_name_or_path="org/model")
    assert main(["inspect", str(d), "--json"]) == 0
    info = strict_loads(capsys.readouterr().out)
    assert info["base_model"] == "org/model" and info["modules"][0]["scale"] == 2.0
    real = inspect_cmd.describe_adapter

    def with_nonfinite(adapter):  # a description carrying NaN/Inf (e.g. an overflowing norm)
        out = real(adapter)
        out["modules"][0].update(norm=float("inf"), scale=float("nan"))
        return out

    monkeypatch.setattr(inspect_cmd, "describe_adapter", with_nonfinite)
    assert main(["inspect", str(d), "--json"]) == 0
    m = strict_loads(capsys.readouterr().out)["modules"][0]
    assert m["norm"] is None and m["scale"] is None and m["rank"] == 4
    assert json_safe({"a": [1.0, float("-inf")], "b": (float("nan"),)}) == {"a": [1.0, None], "b": [None]}


def test_cli_refusal_for_size_limit_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_ATLAS_MAX_FILE_BYTES", "100")
    assert main(["inspect", str(peft_dir(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adapter-atlas: error: ") and "\n" not in err and "over the limit of 100 B" in err


def test_adapter_supplied_strings_are_inert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = "**x** [site](http://e.vil) <img src=x onerror=alert(1)> $\\pi$ :red[hi] @all\n\x1b[31mred\u202e"
    md = markdown_text(evil)
    for raw in ("**", "[site]", "<img", "$\\pi", ":red[", "\n", "\x1b", "\u202e", "](", "http://"):
        assert raw not in md, raw
    assert "\\*\\*x\\*\\*" in md and "&lt;img" in md and "\\$" in md
    assert plain_text(evil) == "**x** [site](http://e.vil) <img src=x onerror=alert(1)> $\\pi$ :red[hi] @all [31mred"
    assert plain_text("a" * 500, 10) == "a" * 9 + "…"
    assert main(["inspect", str(peft_dir(tmp_path, base_model_name_or_path=evil))]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "base model: **x** [site](http://e.vil)" in out.splitlines()[2]
