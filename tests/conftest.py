"""Shared test set-up: fixed seeds, a headless plotting backend, and the native-extension guard."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Plugin problems (unknown hooks or hook arguments, API mismatch, import errors) fail
# the suite instead of warning; tests of broken plugins switch it off for themselves.
os.environ.setdefault("PANTHER_STRICT_PLUGINS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run, so CI is reproducible (fixed seeds,
# like the rest of the suite); explore new examples locally with HYPOTHESIS_PROFILE=explore.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The storage tests' fixtures: the databases to test on (`url`), a non-UTC local time.
pytest_plugins = ["storage_helpers"]


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


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread.

    Tuning tests do many tiny products, which run fastest single-threaded (and far faster
    when the machine is busy); results are the same.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
