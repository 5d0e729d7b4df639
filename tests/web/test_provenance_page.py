"""The web page shows where its model was built from and whose key signed it, read from the
provenance.intoto.jsonl a build writes beside the bundle's files (docs/provenance.md). Cheap: a
stand-in model, stopped at the WebGPU gate; the signature is shown, not checked, by the page."""

from __future__ import annotations

import json

import pytest

from modelforge import provenance
from modelforge.web.layout import Variant, write_bundle
from modelforge.web.serve import serve

from .test_browser import CHROMIUM, pytestmark, playwright, runtime, session_factory  # noqa: F401 - fixtures

REVISION = "9185" + "0" * 36


@pytest.fixture
def bundle_with_provenance(small_task, runtime, tmp_path):  # noqa: F811 - the runtime fixture
    from cryptography.hazmat.primitives.asymmetric import ec

    out = tmp_path / "bundle"
    write_bundle(out, variants=[Variant(name="stand-in", task=small_task, label="Stand-in", max_tokens=8)], runtime=runtime, title="gate")
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "bundle.json", "digest": {"sha256": "0" * 64}}],
        "predicateType": provenance.PREDICATE_TYPE,
        "predicate": {"buildDefinition": {"buildType": provenance.BUILD_TYPE, "resolvedDependencies": [
            {"name": "google/medgemma-1.5-4b-it", "digest": {"gitCommit": REVISION},
             "annotations": {"kind": "hub", "repo": "google/medgemma-1.5-4b-it", "revision": REVISION}},
        ]}},
    }
    key = ec.generate_private_key(ec.SECP256R1())
    envelope = provenance.sign_envelope(provenance.canonical(statement), key)
    (out / provenance.PROVENANCE_FILE).write_text(json.dumps(envelope) + "\n")
    return out, provenance.key_id(key.public_key())


def test_the_page_shows_the_source_and_the_signer(bundle_with_provenance, session_factory):  # noqa: F811
    bundle, signer = bundle_with_provenance
    with serve(bundle) as server:
        session = session_factory([])
        session.open(server.url)
        session.page.locator("#provenance").wait_for(state="visible", timeout=30_000)
        text = session.page.inner_text("#provenance")
    assert f"Built from google/medgemma-1.5-4b-it@9185000 by key {signer[:19]}…" in text
    assert "does not check the signature" in text
