"""cdnn/kinds.py against the kernels: every table entry's kernel id is the value of the enum
member of its name in src/*.pxd (and every member has an entry), every optimizer's state
buffers are fields of the native OptimizerState, and the compiled kernels compute each entry's
reference under its id. A table entry that disagrees with the enums fails here."""
import inspect
import os
import re

import numpy as np
import pytest

import cdnn
from cdnn import kinds, optim
from cdnn._native import _network

SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src")


def enum(pxd: str, name: str) -> dict[str, int]:
    """The members of `cdef enum name:` in src/pxd, NAME -> value"""
    return dict((member, int(value)) for member, value in re.findall(
        r"^    (\w+) = (\d+)", _block(pxd, rf"cdef enum {name}:"), re.M))


def struct_fields(pxd: str, name: str) -> set[str]:
    return set(re.findall(r"^    void\* (\w+)", _block(pxd, rf"cdef struct {name}:"), re.M))


def _block(pxd: str, header: str) -> str:
    with open(os.path.join(SRC, pxd), encoding="utf-8") as f:
        text = f.read()
    found = re.search(rf"^{header}.*\n((?:    .*\n|\n)*?)(?=\S)", text, re.M)
    assert found, f"{header} not found in src/{pxd}"
    return found.group(1)


@pytest.mark.parametrize("table, pxd, name", [(kinds.ACTIVATIONS, "activations.pxd", "Activation"),
                                              (kinds.LOSSES, "losses.pxd", "Loss")])
def test_each_entry_is_its_enum_member(table, pxd, name):
    members = enum(pxd, name)
    assert members, f"no members parsed from {pxd}"
    assert {kind.name.upper(): kind.kernel for kind in table.values()} == members


def test_each_optimizer_runs_a_kernel_of_the_enum():
    members = enum("optim.pxd", "OptimizerKind")
    assert {kind.kernel for kind in kinds.OPTIMIZERS.values()} == set(members.values())
    for member, value in members.items():       # the kernel's own entry carries its name
        assert kinds.OPTIMIZERS[member.lower()].kernel == value


def test_every_state_buffer_is_a_field_of_the_native_state():
    fields = struct_fields("optim.pxd", "OptimizerState")
    (max_state,) = re.findall(r"MAX_STATE = (\d+)", _block("optim.pxd", "cdef enum:"))
    for kind in kinds.OPTIMIZERS.values():
        assert set(kind.state) <= fields and len(kind.state) <= int(max_state), kind.name
        assert set(kind.squares) <= set(kind.state)


def test_the_step_failures_are_the_status_enum():
    status = enum("step.pxd", "Status")
    assert set(_network.STEP_FAILURES) == set(status.values()) - {status["STEP_OK"]}


def test_the_cuda_kernels_enums_are_the_tables():
    """cdnn/cuda/kernels.cu declares the kinds' ids again, for NVRTC (it cannot include the
    .pxd files): each of its enums must be the table's, and the Status its step.pxd's."""
    path = os.path.join(os.path.dirname(cdnn.__file__), "cuda", "kernels.cu")
    with open(path, encoding="utf-8") as f:
        declared = dict((k, int(v)) for k, v in re.findall(r"(\w+) = (\d+)", "".join(
            re.findall(r"^enum \{([^}]*)\};", f.read(), re.M | re.S))))
    for table in (kinds.ACTIVATIONS, kinds.LOSSES):
        for kind in table.values():
            assert declared[kind.name.upper()] == kind.kernel, kind.name
    status = enum("step.pxd", "Status")
    assert {k: declared[k] for k in declared if k in status} == {
        k: v for k, v in status.items() if k in declared} and "UPDATE_NOT_FINITE" in declared


def test_optimizer_classes_and_entries_name_each_other():
    classes = {cls for _, cls in inspect.getmembers(optim, inspect.isclass)
               if issubclass(cls, optim.Optimizer) and cls is not optim.Optimizer}
    assert {optim.class_of(kind) for kind in kinds.OPTIMIZERS.values()} == classes
    for name, kind in kinds.OPTIMIZERS.items():
        cls = optim.class_of(kind)
        assert cls.kind == name and cls.__name__ == kind.class_name and cls.spec() is kind
        assert getattr(cdnn, kind.class_name) is cls
        assert cls().kernel_config()["kernel"] == kind.kernel


@pytest.mark.parametrize("table", [kinds.ACTIVATIONS, kinds.LOSSES])
def test_names_and_aliases_are_unique(table):
    every = kinds.names(table)
    assert len(every) == len(set(every))


@pytest.mark.parametrize("name", kinds.ACTIVATIONS)
def test_the_compiled_kernel_under_each_id_computes_its_reference(name):
    kind = kinds.ACTIVATIONS[name]
    z = np.linspace(-4, 4, 33).reshape(3, 11)
    out = z.copy()
    _network.apply_activation(out, kind.kernel, 0.2)
    np.testing.assert_allclose(out, kind.forward(z, 0.2), rtol=1e-12, atol=1e-15)


def test_aliases_resolve_everywhere():
    net = cdnn.MLP([3, 4, 2], activation="logistic", loss="mse")
    assert net.activations == ("sigmoid",) and net.loss == "mean_squared_error"
