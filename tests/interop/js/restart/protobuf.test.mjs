// centrifuge-js, Protobuf build, across tether restarts (disk engine).
import { CODECS } from './helpers.mjs';
import { defineRestartSuite } from './suite.mjs';

defineRestartSuite(CODECS.protobuf);
