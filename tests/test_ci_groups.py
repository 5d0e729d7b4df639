"""The xdist groups of tests/conftest.py: a module with a test over the tiny litertlm build runs in
the litertlm group, or a second worker would build it again."""

from __future__ import annotations

from conftest import LITERTLM_FIXTURES, LITERTLM_MODULES, ROOT


def test_every_module_over_the_litertlm_build_is_in_its_group(request):
    modules = {item.path.relative_to(ROOT).as_posix() for item in request.session.items if LITERTLM_FIXTURES & set(item.fixturenames)}
    assert modules <= LITERTLM_MODULES, sorted(modules - LITERTLM_MODULES)
