// genloom's first screen: where the editor would show ComfyUI's default graph (nothing restored from
// an earlier session, or "Load Default"), it shows genloom's txt2img template, which runs on the
// shipped model. A first visit goes straight to that graph rather than to an empty canvas under the
// template browser; the templates stay one click away in the Templates panel.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const DEFAULT_TEMPLATE = "txt2img";

app.registerExtension({
  name: "genloom.FirstScreen",
  async setup() {
    let graph = null;
    try {
      const answer = await fetch(api.fileURL(`/templates/${DEFAULT_TEMPLATE}.json`), { cache: "no-store" });
      if (answer.ok) graph = await answer.json();
    } catch (error) {
      console.warn("genloom: the default workflow could not be read", error);
    }
    if (!graph) return;
    const load = app.loadGraphData.bind(app);
    // Called with no graph, the editor loads its built-in default: give it genloom's instead.
    app.loadGraphData = (data, ...rest) =>
      load(data && typeof data === "object" && !Array.isArray(data) ? data : structuredClone(graph), ...rest);
    const settings = app.extensionManager?.setting;
    if (settings && !settings.get("Comfy.TutorialCompleted")) {
      // Without this a first visit opens on an empty canvas; with it the editor loads its default graph.
      await settings.set("Comfy.TutorialCompleted", true);
    }
  },
});
