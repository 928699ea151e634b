(args) => {
  const node = args.selectors.map((s) => document.querySelector(s)).find(Boolean);
  return {text: (document.body ? document.body.innerText : '').slice(0, args.limit),
          product: node ? node.innerText : ''};
}
