// centrifuge-js, JSON build (`import { Centrifuge } from 'centrifuge'`), against tether.
import { CODECS } from './helpers.mjs';
import { defineSuite } from './suite.mjs';

defineSuite(CODECS.json);
