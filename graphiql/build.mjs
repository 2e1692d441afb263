// Builds GraphiQL's assets into `dist/` (or the folder given as the first argument): one
// minified script, one stylesheet, and the licences of every package bundled into them. Also
// writes the introspection queries of the pinned graphql-js that tests replay (see
// docs/graphiql.md). Run it through scripts/build-graphiql, after `npm ci`.

import { build } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getIntrospectionQuery } from 'graphql';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(process.argv[2] ?? path.join(here, 'dist'));
const fixtures = path.resolve(process.argv[3] ?? path.join(here, '..', 'tests', 'fixtures'));
const version = (name) => JSON.parse(fs.readFileSync(path.join(here, 'node_modules', name, 'package.json'))).version;
const banner = `/*! GraphiQL ${version('graphiql')} with React ${version('react')}, bundled for Ensemble; licences in THIRD-PARTY-LICENSES.txt beside this file. */`;

fs.mkdirSync(out, { recursive: true });
const result = await build({
  absWorkingDir: here,
  entryPoints: { graphiql: 'src/main.js' },
  outdir: out,
  bundle: true,
  minify: true,
  format: 'iife',
  platform: 'browser',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  define: { 'process.env.NODE_ENV': '"production"' },
  legalComments: 'none',
  banner: { js: banner, css: banner },
  charset: 'utf8',
  metafile: true,
  logLevel: 'warning',
});

fs.writeFileSync(path.join(out, 'THIRD-PARTY-LICENSES.txt'), licences(Object.keys(result.metafile.inputs)));

const full = { descriptions: true, specifiedByUrl: true, directiveIsRepeatable: true, schemaDescription: true, inputValueDeprecation: true, oneOf: true };
fs.mkdirSync(fixtures, { recursive: true });
fs.writeFileSync(path.join(fixtures, 'introspection-query.graphql'), getIntrospectionQuery());
fs.writeFileSync(path.join(fixtures, 'introspection-query-full.graphql'), getIntrospectionQuery(full));

/** The name, version, licence and licence text of every package a bundled file comes from. */
function licences(inputs) {
  const roots = new Set();
  for (const input of inputs) {
    const match = input.match(/^(.*?node_modules\/(?:@[^/]+\/)?[^/]+)\//);
    if (match) roots.add(match[1]);
  }
  const sections = [...roots].map((root) => {
    const manifest = JSON.parse(fs.readFileSync(path.join(here, root, 'package.json')));
    const text = licenceText(root, manifest);
    return { name: manifest.name, text: `${manifest.name} ${manifest.version} (${manifest.license})\n\n${text}\n` };
  });
  sections.sort((a, b) => (a.name < b.name ? -1 : 1));
  const rule = `\n${'-'.repeat(78)}\n\n`;
  return `The packages bundled into graphiql.js and graphiql.css, with their licences.\n${rule}${sections.map((s) => s.text).join(rule)}`;
}

/**
 * The package's licence file or, when it ships none, what its package.json declares and the
 * copyright header of its main file if it has one.
 */
function licenceText(root, manifest) {
  const file = fs.readdirSync(path.join(here, root)).find((name) => /^(licen[cs]e|copying)/i.test(name));
  if (file) return fs.readFileSync(path.join(here, root, file), 'utf8').trim();
  const author = typeof manifest.author === 'string' ? manifest.author : manifest.author?.name;
  const mainFile = path.join(here, root, manifest.main ?? 'index.js');
  const main = fs.existsSync(mainFile) ? fs.readFileSync(mainFile, 'utf8') : '';
  const header = main.match(/^\/\*\*?[\s\S]*?\*\//);
  return [`(The package ships no licence file. Its package.json declares the ${manifest.license} licence${author ? `, author ${author}` : ''}.)`, header?.[0]].filter(Boolean).join('\n\n');
}
