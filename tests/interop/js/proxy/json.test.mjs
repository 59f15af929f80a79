// centrifuge-js, JSON build, against tether running with the backend proxy.
import { CODECS } from './helpers.mjs';
import { defineSuite } from './suite.mjs';

defineSuite(CODECS.json);
