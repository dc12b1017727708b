// The official openai npm package against agentmesh's OpenAI-compatible HTTP API.
// BASE_URL, API_KEY and MODEL come from the environment; prints one JSON line of findings.
import OpenAI from "openai";

const baseURL = process.env.BASE_URL;
const model = process.env.MODEL ?? "default";
const messages = [{ role: "user", content: "Say hello" }];
const client = new OpenAI({ baseURL, apiKey: process.env.API_KEY, maxRetries: 0 });
const out = {};

const stream = await client.chat.completions.create({
  model,
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
out.text = "";
for await (const chunk of stream) {
  for (const choice of chunk.choices) out.text += choice.delta?.content ?? "";
  if (chunk.usage) out.usage = chunk.usage;
}

const whole = await client.chat.completions.create({ model, messages });
out.whole = whole.choices[0].message.content;
out.models = (await client.models.list()).data.map((m) => m.id);

try {
  const stranger = new OpenAI({ baseURL, apiKey: "sk-not-a-key", maxRetries: 0 });
  await stranger.chat.completions.create({ model, messages });
} catch (error) {
  out.badKey = { name: error.constructor.name, status: error.status };
}
try {
  await client.chat.completions.create({ model: "no-such-route", messages });
} catch (error) {
  out.unknownModel = { name: error.constructor.name, status: error.status };
}
console.log(JSON.stringify(out));
