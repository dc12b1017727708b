// Builds the UI into the web edge's package: static/index.html and static/assets/ (names
// carry a content hash, so a browser never runs a stale script after an upgrade).
// `node build.mjs --check` builds in memory and fails if the committed files differ: with
// esbuild pinned the output is byte-for-byte deterministic, so CI can hold the two together.
import { build } from "esbuild";
import { mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const staticDir = join(here, "..", "src", "agentmesh_web", "static");
const assetsDir = join(staticDir, "assets");
const check = process.argv.includes("--check");

const result = await build({
  absWorkingDir: here, // output must not depend on where the command runs
  entryPoints: ["src/main.tsx"],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  jsx: "automatic",
  jsxImportSource: "preact",
  entryNames: "[name]-[hash]",
  outdir: assetsDir,
  legalComments: "none",
  charset: "utf8",
  write: false,
  logLevel: "warning",
});

const files = new Map(); // path relative to static/ -> contents
let script = "";
let style = "";
for (const output of result.outputFiles) {
  const name = basename(output.path);
  files.set(`assets/${name}`, Buffer.from(output.contents));
  if (name.endsWith(".js")) script = name;
  if (name.endsWith(".css")) style = name;
}
const index = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>agentmesh</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="assets/${style}">
<script type="module" src="assets/${script}"></script>
</head>
<body><div id="app"></div></body>
</html>
`;
files.set("index.html", Buffer.from(index));

async function committed() {
  const found = new Map();
  for (const name of await readdir(assetsDir).catch(() => [])) {
    found.set(`assets/${name}`, await readFile(join(assetsDir, name)));
  }
  const html = await readFile(join(staticDir, "index.html")).catch(() => null);
  if (html !== null) found.set("index.html", html);
  return found;
}

if (check) {
  const onDisk = await committed();
  const names = new Set([...files.keys(), ...onDisk.keys()]);
  const stale = [...names].filter((n) => !files.get(n)?.equals(onDisk.get(n) ?? Buffer.alloc(0)));
  if (stale.length) {
    console.error(`the built UI differs from services/web/ui (run \`make ui\`): ${stale.join(", ")}`);
    process.exit(1);
  }
  console.log("built UI matches its sources");
} else {
  await rm(assetsDir, { recursive: true, force: true });
  await mkdir(assetsDir, { recursive: true });
  for (const [name, contents] of files) await writeFile(join(staticDir, name), contents);
  console.log(`built ${[...files.keys()].join(", ")}`);
}
