// How GraphiQL reaches the server: queries and mutations over HTTP, subscriptions over the
// websocket at /graphql/ws (graphql-transport-ws). The headers typed in GraphiQL's Headers tab go
// with both: as HTTP headers, and as the `connection_init` payload of a socket opened for that
// set of headers (the server reads `authorization` there, as it reads the header over HTTP).

import { getOperationAST, parse } from 'graphql';
import { createClient } from 'graphql-ws';

const httpUrl = new URL('/graphql', window.location.href).href;
const wsUrl = httpUrl.replace(/^http/, 'ws') + '/ws';

/** One lazy client per distinct set of headers: its socket is open only while it is in use. */
const clients = new Map();

/** GraphiQL's fetcher: a promise of the response, or an observable of a subscription's. */
export function fetcher(params, opts = {}) {
  const headers = opts.headers ?? {};
  return isSubscription(params) ? subscribe(params, headers) : post(params, headers);
}

/**
 * Whether the operation sent is a subscription, read from the text sent: GraphiQL's own parsed
 * document (`opts.documentAST`) can still be the editor's previous content just after a change.
 */
function isSubscription(params) {
  try {
    const document = parse(params.query);
    return getOperationAST(document, params.operationName ?? undefined)?.operation === 'subscription';
  } catch {
    // A document that does not parse goes to the server, which says why.
    return false;
  }
}

async function post(params, headers) {
  const response = await fetch(httpUrl, {
    method: 'POST',
    headers: {
      accept: 'application/graphql-response+json, application/json',
      ...headers,
      'content-type': 'application/json',
    },
    body: JSON.stringify(params),
  });
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`The server answered ${response.status} ${response.statusText}: ${text.slice(0, 500)}`);
  }
}

function clientFor(headers) {
  const key = JSON.stringify(Object.entries(headers).sort(([a], [b]) => (a < b ? -1 : 1)));
  let client = clients.get(key);
  if (!client) {
    client = createClient({ url: wsUrl, connectionParams: headers, lazy: true });
    clients.set(key, client);
  }
  return client;
}

function subscribe(params, headers) {
  const client = clientFor(headers);
  return {
    subscribe(sink) {
      const unsubscribe = client.subscribe(params, {
        next: (value) => sink.next(value),
        complete: () => sink.complete(),
        error: (error) => sink.error(describe(error)),
      });
      return { unsubscribe };
    },
  };
}

/** A socket closing is a CloseEvent, which GraphiQL would show as `{}`: say what it means. */
function describe(error) {
  if (Array.isArray(error) || error instanceof Error) return error;
  if (typeof error?.code === 'number') {
    const reason = error.reason ? ` (${error.reason})` : '';
    return new Error(`The websocket closed with code ${error.code}${reason}.`);
  }
  return new Error('The websocket failed; is the server running?');
}
