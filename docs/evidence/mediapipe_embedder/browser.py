"""Run each .task in the page (MediaPipe, WebGPU/SwiftShader), greedy (topK 1), and print the answers."""
import json, sys, time
from pathlib import Path
sys.path.insert(0, "/work/wt-task")
from playwright.sync_api import sync_playwright
from tests.web.test_browser import Session, WEBGPU, ANSWERED
from modelforge.web.layout import Variant, write_bundle
from modelforge.web.serve import serve
from modelforge.web.vendor import runtime_files

EXP = Path("/tmp/wt-task-exp")
PROMPTS = ["What are common symptoms of anemia?", "Describe the chest X-ray findings.", "List the risk factors for stroke."]
names = sys.argv[1:] or ["a_float", "b_float", "a_int8", "b_int8"]
runtime = runtime_files(Path("/work/wt-task/web"))
results = {}
with sync_playwright() as p:
    for name in names:
        out = EXP / f"bundle-{name}"
        if not out.exists():
            write_bundle(out, variants=[Variant(name=name.replace("_", "-"), task=EXP / f"{name}.task", label=name, max_tokens=64, top_k=1, temperature=1.0, random_seed=0)],
                         runtime=runtime, title=name)
        results[name] = {}
        with serve(out) as server:
            session = Session(p, WEBGPU)
            try:
                state = session.open(server.url)
                if state != "ready":
                    results[name] = {"error": session.diagnostics()}
                    print(name, "NOT READY\n", session.diagnostics(), flush=True)
                    continue
                for prompt in PROMPTS:
                    session.page.fill("#prompt", prompt)
                    session.page.click("#send")
                    session.page.locator(ANSWERED).wait_for(timeout=240_000)
                    answer = session.page.inner_text("#answer")
                    results[name][prompt] = answer
                    print(name, repr(prompt), "->", repr(answer), "errors:", session.text("#errors"), flush=True)
                    session.page.reload(); session.page.locator("body[data-state=ready], body[data-state=error]").wait_for(timeout=120_000)
            finally:
                print("console tail:", "\n".join(session.console[-8:]))
                session.close()
(EXP / f"answers-{'-'.join(names)}.json").write_text(json.dumps(results, indent=1))
