// Runs mkdocs-material's own search worker (as the browser does) on a built site's index, in Node, and prints the
// pages each query finds, best first, as JSON: {"query": ["zh/faq/#echo", ...]}. Used by tests/test_docs.py:
//   node tests/docs_search.js MATERIAL/templates/assets/javascripts SITE/search/search_index.json QUERY...
const fs = require("fs"), vm = require("vm"), path = require("path");
const [assets, indexPath, ...queries] = process.argv.slice(2);
globalThis.self = globalThis;
let handler;
globalThis.addEventListener = (type, fn) => { handler = fn; };
let replies = [];
globalThis.postMessage = (message) => replies.push(message);
globalThis.importScripts = (...urls) => {
  for (const url of urls) {
    const file = path.join(assets, url.replace(/^\.\.\//, ""));
    vm.runInThisContext(fs.readFileSync(file, "utf8"), { filename: file });
  }
};
const worker = fs.readdirSync(path.join(assets, "workers")).find((f) => /^search\..*\.min\.js$/.test(f));
vm.runInThisContext(fs.readFileSync(path.join(assets, "workers", worker), "utf8"), { filename: worker });
const index = JSON.parse(fs.readFileSync(indexPath, "utf8"));
index.options = { suggest: false };   // what the page passes along with the index
const settle = () => new Promise((resolve) => setTimeout(resolve, 50));
(async () => {
  handler({ data: { type: 0, data: index } });
  while (!replies.length) await settle();
  const out = {};
  for (const query of queries) {
    replies = [];
    handler({ data: { type: 2, data: query } });
    while (!replies.length) await settle();
    out[query] = replies[0].data.items.map((group) => group[0].location);
  }
  console.log(JSON.stringify(out));
})();
