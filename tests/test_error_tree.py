"""The exception tree in punchd/errors.py is the whole tree (#15 item 4)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import meshdns
import punchd
import signal_server
from punchd import errors


def _all_modules() -> list[str]:
    names = []
    for package in (punchd, signal_server, meshdns):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return names


def test_every_project_error_is_defined_in_errors_py_and_drawn_in_its_tree() -> None:
    outside = []
    for name in _all_modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, errors.PunchdError) and cls.__module__ != "punchd.errors":
                outside.append(f"{cls.__module__}.{cls_name}")
    assert outside == []
    doc = errors.__doc__ or ""
    defined = [cls.__name__ for _, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, errors.PunchdError)]
    assert [n for n in defined if f" {n} " not in doc and not doc.count(f"{n}\n")] == []
