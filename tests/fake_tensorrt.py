"""A stand-in for the `tensorrt` module (10.x or 11.x API surface) so pedit.export.trt's code paths run here.

TensorRT cannot be installed on these machines (its wheels fetch their libraries from NVIDIA at
install time), so this is a test double, not TensorRT: it implements the calls pedit makes, with
the rules of the real API that pedit's code must respect, and nothing else.

    make("10")  TensorRT 10.13: BuilderFlag.FP16 and Builder.platform_has_fast_fp16 exist; a network
                must be created with the STRONGLY_TYPED flag (weak typing is deprecated since 10.12:
                this double refuses it), and FP16 on a strongly typed network fails the build.
    make("11")  TensorRT 11: no BuilderFlag.FP16, no platform_has_fast_fp16 (AttributeError, as
                in 11); the STRONGLY_TYPED flag is accepted and ignored (every network is).

Parsing loads the ONNX graph with onnx (external data included: a missing .onnx.data fails the
parse as in TensorRT) and checks it with onnx.checker. The "engine" is JSON naming the graph, its
profiles and the TensorRT version; a plan of another version deserialises to None, as TensorRT's
does. Binding dtypes are the graph's input/output types (strongly typed). Execution runs the graph
in ONNX Runtime on host memory at the bound addresses, so CPU tensors can stand in for GPU buffers,
and records the stream handle of every enqueue.
"""

from __future__ import annotations

import ctypes
import json
import types

import numpy as np

_ONNX_TO_DT = {1: "FLOAT", 10: "HALF", 16: "BF16", 6: "INT32", 7: "INT64", 9: "BOOL"}
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


class _Member:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def __int__(self):
        return self.value

    def __eq__(self, other):
        return isinstance(other, _Member) and (self.name, self.value) == (other.name, other.value)

    def __hash__(self):
        return hash((self.name, self.value))

    def __repr__(self):
        return f"DataType.{self.name}"


def _enum(name, members):
    return type(name, (), {m: _Member(m, i) for i, m in enumerate(members)})


def make(variant: str) -> types.ModuleType:
    assert variant in ("10", "11")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0.35" if variant == "10" else "11.4.0.0"
    trt.DataType = _enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64"])
    trt.TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"])
    flags = ["TF32", "REFIT", "FP16"] if variant == "10" else ["TF32", "REFIT"]
    trt.BuilderFlag = _enum("BuilderFlag", flags)
    trt.calls = {"streams": [], "built": []}  # what the tests inspect

    class Logger:
        WARNING = 2

        def __init__(self, level=2):
            self.level = level

    class Network:
        def __init__(self, flags):
            self.strongly_typed = variant == "11" or bool(flags & (1 << 1))
            self.onnx_path = None
            self.io = {}

    class ParserError:
        def __init__(self, desc):
            self.desc = desc

        def __str__(self):
            return self.desc

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            import onnx

            try:
                model = onnx.load(path)  # with its external data, as TensorRT's parser reads it
                onnx.checker.check_model(model)
            except Exception as e:
                self.errors.append(ParserError(f"In node -1 (parseGraph): INVALID_GRAPH: {e}"))
                return False
            self.network.onnx_path = path
            for v, mode in [(i, "INPUT") for i in model.graph.input] + [(o, "OUTPUT") for o in model.graph.output]:
                self.network.io[v.name] = (mode, _ONNX_TO_DT[v.type.tensor_type.elem_type])
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            assert all(isinstance(s, tuple) for s in (lo, opt, hi))
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), (lo, opt, hi)
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data) or b"fake-timing-cache"

        def serialize(self):
            return self.data

    class BuilderConfig:
        def __init__(self):
            self.flags, self.profiles, self.cache = set(), [], None
            self.builder_optimization_level = 3

        def set_flag(self, flag):
            self.flags.add(flag.name)

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            self.profiles.append(profile.shapes)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if not network.strongly_typed:
                return None  # 10.12+: weak typing is deprecated (this double refuses it)
            if "FP16" in config.flags:
                return None  # precision flags are not allowed on strongly typed networks
            trt.calls["built"].append(network.onnx_path)
            return json.dumps({"fake_tensorrt": trt.__version__, "onnx": network.onnx_path, "io": network.io,
                               "profiles": config.profiles}).encode()

    if variant == "10":
        Builder.platform_has_fast_fp16 = property(lambda self: True)

    class Engine:
        def __init__(self, plan):
            self.plan = plan
            self.names = list(plan["io"])

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, self.plan["io"][name][1])

        def get_tensor_mode(self, name):
            return getattr(trt.TensorIOMode, self.plan["io"][name][0])

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses, self.profile = engine, {}, {}, 0
            self.session = None

        def set_optimization_profile_async(self, index, stream):
            assert 0 <= index < len(self.engine.plan["profiles"])
            self.profile = index
            return True

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.plan["profiles"][self.profile].get(name, [list(shape)] * 3)
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, address):
            self.addresses[name] = int(address)
            return True

        def _array(self, name, shape):
            dt = np.dtype(_NP[self.engine.plan["io"][name][1]])
            n = int(np.prod(shape)) * dt.itemsize
            raw = (ctypes.c_byte * n).from_address(self.addresses[name])
            return np.frombuffer(raw, dtype=dt).reshape(shape)

        def execute_async_v3(self, stream_handle):
            import onnxruntime as ort

            trt.calls["streams"].append(int(stream_handle))
            if self.session is None:
                self.session = ort.InferenceSession(self.engine.plan["onnx"], providers=["CPUExecutionProvider"])
            feeds = {}
            for i in self.session.get_inputs():
                shape = self.shapes.get(i.name) or tuple(i.shape)
                feeds[i.name] = self._array(i.name, shape).copy()
            for o, value in zip(self.session.get_outputs(), self.session.run(None, feeds)):
                np.copyto(self._array(o.name, value.shape), value)  # writes into the bound buffer
            return True

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            try:
                plan = json.loads(bytes(data))
            except ValueError:
                return None  # not a plan: TensorRT logs an error and returns None
            if plan.get("fake_tensorrt") != trt.__version__:
                return None  # a plan of another TensorRT version
            return Engine(plan)

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt
