// Sign-in: paste a token from `ensemble token`; it is checked with `me` before anything shows.

import { h, note, show } from '../ui.js';

/** Renders the form; `signIn(token)` checks and stores the token, or throws why not. */
export function render({ view, message, signIn }) {
  const field = h('textarea', { id: 'token', name: 'token', rows: 4, required: true, autocomplete: 'off', spellcheck: 'false' });
  const status = h('div', { class: 'form-status' }, message ? note('error', message) : null);
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', { class: 'signin', onsubmit: (event) => send(event, field, submit, status, signIn) },
    h('h1', {}, 'Sign in to the Ensemble dashboard'),
    h('label', { for: 'token' }, 'Session token'),
    h('p', { class: 'hint' }, 'Run ', h('code', {}, 'ensemble token --user <you>'), ' and paste what it prints. The token is kept in this tab only.'),
    field,
    status,
    submit);
  show(view, form);
  field.focus();
}

async function send(event, field, submit, status, signIn) {
  event.preventDefault();
  const token = field.value.trim();
  if (!token) {
    show(status, note('error', 'Paste a token first.'));
    return;
  }
  submit.disabled = true;
  show(status, note('loading', 'Checking the token…'));
  try {
    await signIn(token);
  } catch (error) {
    show(status, note('error', error.message));
    submit.disabled = false;
  }
}
