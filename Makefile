# The two commands of the README: `make demo` runs the main job, `make test` the whole test suite.
# Both install what they need (as root on Debian bookworm) through scripts/bootstrap; the tests also build
# a real kube-apiserver and controller-manager once (scripts/kube-testenv build: ~7 min, then cached).

.PHONY: demo test lint unit bench

demo:
	scripts/bootstrap
	scripts/demo

test:
	scripts/bootstrap dev
	scripts/kube-testenv build
	$(MAKE) lint
	.venv/bin/pytest -q

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy src

unit:
	.venv/bin/pytest -q tests/unit

bench:
	scripts/bootstrap dev
	.venv/bin/python -m bench
