// GET /docs (the API reference as a page) and GET /docs/openapi.json (the OpenAPI document). The page
// is rendered here from the document, without scripts or assets from elsewhere, so it works offline
// and behind any content policy.
import { createHash } from 'node:crypto';
import { Hono } from 'hono';
import { openApiDocument } from '../openapi';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- it walks the OpenAPI document's free-form JSON
type Json = Record<string, any>;

/** The page's one stylesheet, inline; the content policy allows exactly it, by its hash. */
const STYLE = `
body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:13px}code{font-size:13px}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
.op{border-top:1px solid #eee;padding:.4rem 0}.m{display:inline-block;min-width:4rem;padding:0 .3rem;color:#fff;border-radius:3px;font-size:13px;text-align:center}
.get{background:#2b7bb9}.post{background:#2e8540}.patch{background:#b58105}
`;

/** `sha256-...` of STYLE, for the page's Content-Security-Policy (src/web/middleware/security-headers.ts). */
export const DOCS_STYLE_HASH = `sha256-${createHash('sha256').update(STYLE, 'utf8').digest('base64')}`;

const escape = (text: unknown) =>
  String(text).replace(/[&<>"']/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[ch] as string);

const anchor = (text: string) => text.replace(/[^A-Za-z0-9]+/g, '-');

/** A schema as indented JSON, its $refs turned into links to the schema's section. */
function schemaBlock(schema: unknown): string {
  const json = escape(JSON.stringify(schema, null, 2));
  return `<pre>${json.replace(/&quot;#\/components\/schemas\/(\w+)&quot;/g, (_m, name: string) => `<a href="#schema-${name}">${name}</a>`)}</pre>`;
}

function responseBlock(status: string, response: Json, doc: Json): string {
  const resolved: Json = response.$ref ? doc.components.responses[String(response.$ref).split('/').pop() as string] : response;
  const content = resolved.content ? Object.entries(resolved.content as Record<string, Json>)[0] : undefined;
  const schema = content?.[1]?.schema;
  const shown = schema?.$ref
    ? `<a href="#schema-${String(schema.$ref).split('/').pop()}">${escape(String(schema.$ref).split('/').pop())}</a>`
    : '';
  return `<li><b>${escape(status)}</b> ${escape(resolved.description)} ${content ? `<code>${escape(content[0])}</code>` : ''} ${shown}${schema && !schema.$ref && Object.keys(schema).length > 1 ? schemaBlock(schema) : ''}</li>`;
}

function renderPage(doc: Json): string {
  const ops: { tag: string; method: string; path: string; op: Json }[] = [];
  for (const [path, item] of Object.entries(doc.paths as Record<string, Json>)) {
    for (const [method, op] of Object.entries(item)) ops.push({ tag: op.tags?.[0] ?? '', method, path, op });
  }
  const sections = (doc.tags as { name: string }[]).map(({ name }) => {
    const body = ops
      .filter((o) => o.tag === name)
      .map(({ method, path, op }) => {
        const params = (op.parameters ?? []) as Json[];
        return `<section class="op" id="${anchor(`${method}-${path}`)}">
<h3><span class="m ${method}">${method.toUpperCase()}</span> <code>${escape(path)}</code></h3>
<p><b>${escape(op.summary)}</b> ${escape(op.description ?? '')}</p>
${
  params.length
    ? `<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th><th></th></tr>${params
        .map(
          (p) =>
            `<tr><td><code>${escape(p.name)}</code></td><td>${escape(p.in)}</td><td>${p.required ? 'yes' : 'no'}</td><td><code>${escape(JSON.stringify(p.schema))}</code></td><td>${escape(p.description ?? '')}</td></tr>`,
        )
        .join('')}</table>`
    : ''
}
${op.requestBody ? `<details open><summary>request body (application/json)</summary>${schemaBlock(op.requestBody.content['application/json'].schema)}</details>` : ''}
<ul>${Object.entries(op.responses as Record<string, Json>)
          .map(([status, r]) => responseBlock(status, r, doc))
          .join('')}</ul>
</section>`;
      })
      .join('\n');
    return `<h2 id="tag-${anchor(name)}">${escape(name)}</h2>\n${body}`;
  });
  const schemas = Object.entries(doc.components.schemas as Record<string, Json>)
    .map(([name, schema]) => `<section id="schema-${name}"><h3>${escape(name)}</h3>${schemaBlock(schema)}</section>`)
    .join('\n');
  const toc = ops
    .map(
      ({ method, path, op }) =>
        `<li><a href="#${anchor(`${method}-${path}`)}">${method.toUpperCase()} ${escape(path)}</a> ${escape(op.summary)}</li>`,
    )
    .join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escape(doc.info.title)}</title>
<style>${STYLE}</style></head><body>
<h1>${escape(doc.info.title)}</h1>
<p>OpenAPI ${escape(doc.openapi)} document: <a href="/docs/openapi.json">/docs/openapi.json</a>. Authentication: <code>Authorization: Bearer &lt;JWT&gt;</code> (${escape(doc.components.securitySchemes.bearerAuth.description)})</p>
<pre>${escape(doc.info.description)}</pre>
<ul>${toc}</ul>
${sections.join('\n')}
<h2>Schemas</h2>
${schemas}
</body></html>`;
}

export function docsRoutes() {
  const app = new Hono();
  let page: string | undefined;
  app.get('/openapi.json', (c) => c.json(openApiDocument()));
  app.get('/', (c) => {
    page ??= renderPage(openApiDocument());
    return c.html(page);
  });
  return app;
}
