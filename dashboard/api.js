// Ensemble's public API as the dashboard uses it: GraphQL over HTTP with the bearer token, the
// usage CSV as a download, and a small graphql-transport-ws client that reconnects.

const TOKEN_KEY = 'ensemble.token';
const RETRY_DELAYS_MS = [500, 1000, 2000, 4000, 8000];

/** The token pasted at sign-in, kept for this browser tab only. */
export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY) ?? '',
  save: (token) => sessionStorage.setItem(TOKEN_KEY, token.trim()),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** An error the API answered (`code` is its `extensions.code`), or `NETWORK` when it did not. */
export class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

let signedOut = () => {};

/** Called with a message when the server refuses the token (expired or not valid). */
export function onSignedOut(handler) {
  signedOut = handler;
}

function refuse(message, code) {
  if (code === 'UNAUTHENTICATED') signedOut(message);
  return new ApiError(message, code);
}

async function request(url, init) {
  try {
    return await fetch(url, { ...init, headers: { ...init.headers, authorization: `Bearer ${session.token()}` } });
  } catch {
    throw new ApiError('Cannot reach the server. Is it running?', 'NETWORK');
  }
}

/** Runs one GraphQL operation; its first error is thrown as an `ApiError`. */
export async function gql(query, variables = {}) {
  const response = await request('/graphql', {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json().catch(() => null);
  if (body === null) throw new ApiError(`The server answered ${response.status} without a GraphQL body.`, 'INTERNAL');
  const error = body.errors?.[0];
  if (error) throw refuse(error.message, error.extensions?.code ?? 'INTERNAL');
  return body.data;
}

/** Downloads `/reports/usage.csv` with the token (a plain link could not send it). */
export async function downloadUsageCsv(params) {
  const response = await request(`/reports/usage.csv?${new URLSearchParams(params)}`, { method: 'GET' });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const error = body?.errors?.[0];
    throw refuse(error?.message ?? `The server answered ${response.status}.`, error?.extensions?.code ?? 'INTERNAL');
  }
  const name = /filename="?([^";]+)"?/.exec(response.headers.get('content-disposition') ?? '')?.[1] ?? 'usage.csv';
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement('a'), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/**
 * One `graphql-transport-ws` connection to `/graphql/ws`, shared by the pages. It reconnects
 * with growing delays when the server goes away, and starts the open subscriptions again.
 * `onStatus` hears `connecting`, `live`, `reconnecting` and `closed`.
 */
export class LiveSocket {
  constructor(onStatus) {
    this.onStatus = onStatus;
    this.subscriptions = new Map();
    this.nextId = 1;
    this.failures = 0;
    this.socket = null;
    this.acked = false;
    this.stopped = false;
    this.connect();
  }

  /** Starts `query`; `handlers.next(data)` gets each result, `handlers.error(error)` a refusal. Returns the stop function. */
  subscribe(query, variables, handlers) {
    const id = String(this.nextId++);
    this.subscriptions.set(id, { query, variables, handlers });
    if (this.acked) this.send({ id, type: 'subscribe', payload: { query, variables } });
    return () => {
      if (this.subscriptions.delete(id) && this.acked) this.send({ id, type: 'complete' });
    };
  }

  /** Closes for good (sign-out). */
  close() {
    this.stopped = true;
    this.subscriptions.clear();
    this.socket?.close(1000, 'Signed out');
    this.status('closed');
  }

  connect() {
    this.status(this.failures === 0 ? 'connecting' : 'reconnecting');
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}/graphql/ws`, 'graphql-transport-ws');
    this.socket = socket;
    socket.onopen = () => this.send({ type: 'connection_init', payload: { authorization: `Bearer ${session.token()}` } });
    socket.onmessage = (event) => this.receive(JSON.parse(event.data));
    socket.onclose = (event) => this.closed(socket, event.code);
  }

  receive(message) {
    const subscription = this.subscriptions.get(message.id);
    switch (message.type) {
      case 'connection_ack':
        this.acked = true;
        this.failures = 0;
        this.status('live');
        for (const [id, { query, variables }] of this.subscriptions) this.send({ id, type: 'subscribe', payload: { query, variables } });
        break;
      case 'ping':
        this.send({ type: 'pong' });
        break;
      case 'next':
        if (message.payload.errors?.length) subscription?.handlers.error(toError(message.payload.errors));
        else subscription?.handlers.next(message.payload.data);
        break;
      case 'error':
        this.subscriptions.delete(message.id);
        subscription?.handlers.error(toError(message.payload));
        break;
      case 'complete':
        this.subscriptions.delete(message.id);
        break;
    }
  }

  closed(socket, code) {
    if (socket !== this.socket || this.stopped) return;
    this.acked = false;
    if (code === 4403) {
      this.close();
      signedOut('The server refused the token: it has expired or is not valid. Paste a new one.');
      return;
    }
    const delay = RETRY_DELAYS_MS[Math.min(this.failures, RETRY_DELAYS_MS.length - 1)];
    this.failures += 1;
    this.status('reconnecting');
    setTimeout(() => this.stopped || this.connect(), delay);
  }

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  status(status) {
    this.onStatus?.(status);
  }
}

function toError(errors) {
  const first = errors[0] ?? {};
  return new ApiError(first.message ?? 'The subscription failed.', first.extensions?.code ?? 'INTERNAL');
}
