// Loaded by the editor from GET /extensions. It imports the editor's app the way community packs do
// (a path relative to /extensions/<pack>/js/), registers an extension, and marks the page so a test
// can see both.
import { app } from "../../../scripts/app.js";

document.documentElement.dataset.genloomWebPack = "loaded";
app.registerExtension({
  name: "genloom.tests.web_pack",
  async setup() {
    document.documentElement.dataset.genloomWebPackSetup = "done";
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "WebPackNode") {
      nodeType.prototype.genloomWebPackTouched = true;
    }
  },
});
