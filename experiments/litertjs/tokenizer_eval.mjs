// Node: encode each string of strings.json with the two JS SentencePiece candidates, offline, from
// the model directory's tokenizer.json / tokenizer_config.json / tokenizer.model. Prints JSON.
// usage: node tokenizer_eval.mjs MODEL_DIR STRINGS_JSON
import {readFileSync} from 'node:fs';
import {Tokenizer} from '@huggingface/tokenizers';
import {SentencePieceProcessor} from '@sctg/sentencepiece-js';
import {Template} from '@huggingface/jinja';

const [dir, stringsPath, conversationsPath] = process.argv.slice(2);
const strings = JSON.parse(readFileSync(stringsPath, 'utf8'));
const result = {huggingface_tokenizers: {}, sctg_sentencepiece: {}};

try {
  const t0 = performance.now();
  const tokenizer = new Tokenizer(JSON.parse(readFileSync(`${dir}/tokenizer.json`, 'utf8')),
                                  JSON.parse(readFileSync(`${dir}/tokenizer_config.json`, 'utf8')));
  result.huggingface_tokenizers.load_ms = performance.now() - t0;
  result.huggingface_tokenizers.ids = strings.map((s) => tokenizer.encode(s, {add_special_tokens: false}).ids);
  result.huggingface_tokenizers.decoded = result.huggingface_tokenizers.ids.map((ids) => tokenizer.decode(ids));
} catch (error) {
  result.huggingface_tokenizers.error = String(error && error.stack || error);
}
try {
  const t0 = performance.now();
  const spp = new SentencePieceProcessor();
  await spp.loadFromB64StringModel(readFileSync(`${dir}/tokenizer.model`).toString('base64'));
  result.sctg_sentencepiece.load_ms = performance.now() - t0;
  result.sctg_sentencepiece.ids = strings.map((s) => Array.from(spp.encodeIds(s)));
  result.sctg_sentencepiece.decoded = result.sctg_sentencepiece.ids.map((ids) => spp.decodeIds(Int32Array.from(ids)));
} catch (error) {
  result.sctg_sentencepiece.error = String(error && error.stack || error);
}
// The chat template (chat_template.jinja) rendered by @huggingface/jinja, as transformers renders it.
try {
  const template = new Template(readFileSync(`${dir}/chat_template.jinja`, 'utf8'));
  const special = JSON.parse(readFileSync(`${dir}/special_tokens_map.json`, 'utf8'));
  const bos = typeof special.bos_token === 'string' ? special.bos_token : special.bos_token.content;
  result.jinja = JSON.parse(readFileSync(conversationsPath, 'utf8')).map((messages) =>
    template.render({messages, bos_token: bos, add_generation_prompt: true}));
} catch (error) {
  result.jinja = {error: String(error && error.stack || error)};
}
process.stdout.write(JSON.stringify(result));
