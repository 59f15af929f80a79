// centrifuge-js, Protobuf build (`centrifuge/build/protobuf`, subprotocol
// centrifuge-protobuf, binary frames), against tether.
import { CODECS } from './helpers.mjs';
import { defineSuite } from './suite.mjs';

defineSuite(CODECS.protobuf);
