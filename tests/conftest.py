"""Shared test set-up: fixed seeds, a headless plotting backend, and the native-extension guard."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_sessionstart(session):
    # `make test` sets PANTHER_REQUIRE_NATIVE=1: a silently missing extension must fail CI,
    # not quietly test the reference path twice.
    if os.environ.get("PANTHER_REQUIRE_NATIVE") == "1":
        import panther.native

        status = panther.native.load()
        if not status.cpu_loaded:
            pytest.exit(
                "PANTHER_REQUIRE_NATIVE=1 but the native extension did not load: "
                f"{status.reason}",
                returncode=1,
            )


def pytest_report_header(config):
    import panther.native

    return f"panther.native: {panther.native.status()}"


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
