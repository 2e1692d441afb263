// GraphiQL as Ensemble serves it at /graphql. scripts/build-graphiql bundles this file, React,
// GraphiQL and their styles into dist/ (see docs/graphiql.md).

import { GraphiQL } from 'graphiql';
import 'graphiql/style.css';
import { createElement } from 'react';
import { createRoot } from 'react-dom/client';

import { fetcher } from './fetcher.js';
import './page.css';

const root = document.getElementById('graphiql');
createRoot(root).render(createElement(GraphiQL, { fetcher }));
